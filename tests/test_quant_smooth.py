"""smooth: function-preserving channel balancing, migration targets, planted outliers."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import onnx_ir as ir
import pytest
from quant_models import apply, cosine, feeds_for, ln_mlp, mlp, run

from genzip.passes.quant.smooth import hadamard

ANNOTATE = "annotate-precision{keep-defaults=false}"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GENZIP_CACHE_DIR", str(tmp_path / "cache"))


def _linear_chain() -> ir.Model:
    """x -> MatMul -> Add(bias) -> MatMul: the bias-carrying GEMM is a migration target."""
    rng = np.random.default_rng(0)
    inits = [onh.from_array(a, n) for n, a in {
        "w0": rng.standard_normal((16, 32)).astype(np.float32) * 0.3,
        "b0": rng.standard_normal(32).astype(np.float32),
        "w1": rng.standard_normal((32, 8)).astype(np.float32) * 0.3,
    }.items()]
    nodes = [oh.make_node("MatMul", ["x", "w0"], ["m0"], name="mm0"), oh.make_node("Add", ["m0", "b0"], ["a0"], name="add0"),
             oh.make_node("MatMul", ["a0", "w1"], ["y"], name="mm1")]
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 8, 16])],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 8, 8])], inits)
    return ir.from_proto(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 23)], ir_version=10))


def test_hadamard_is_orthonormal():
    h = hadamard(64)
    np.testing.assert_allclose(h @ h.T, np.eye(64), atol=1e-6)
    assert hadamard(48) is None


@pytest.mark.parametrize("factory,where", [(ln_mlp, {"layernorm": 1, "mul": 1}), (_linear_chain, {"gemm": 1, "mul": 1}),
                                           (mlp, {"mul": 3})])
@pytest.mark.parametrize("rotate", ["none", "hadamard"])
def test_smooth_alone_keeps_the_function(factory, where, rotate):
    model = factory()
    feeds = feeds_for(model, seed=9)[0]
    ref = run(model, feeds)
    results = apply(model, f"{ANNOTATE},smooth{{rotate={rotate}}}", feeds_for(model, seed=1, n=3))
    stats = results[1].stats
    assert results[1].modified and {k: stats[k] for k in where} == where
    if rotate == "hadamard":
        assert stats["rotated"] >= 1
    np.testing.assert_allclose(run(model, feeds), ref, rtol=1e-4, atol=1e-4)
    # annotations survive, with the balanced weights
    assert sum("genzip.quant" in n.metadata_props for n in model.graph) == sum(where.values())


def test_smooth_without_annotations_is_unmodified():
    model = mlp()
    results = apply(model, "annotate-precision{ops=Conv},smooth", feeds_for(model, seed=1))
    assert results[1].modified is False


@pytest.mark.parametrize("outlier", [50.0, 100.0])
def test_planted_outliers_break_naive_w8a8_and_smooth_restores(outlier):
    feeds = feeds_for(ln_mlp(outlier=outlier), seed=9)[0]
    calib = feeds_for(ln_mlp(outlier=outlier), seed=1, n=4)
    ref = run(ln_mlp(outlier=outlier), feeds)
    cos = {}
    for name, extra in [("naive", ""), ("smooth", "smooth,"), ("hadamard", "smooth{rotate=hadamard},")]:
        model = ln_mlp(outlier=outlier)
        apply(model, f"{ANNOTATE},{extra}calibrate,quant{{scheme=w8a8}}", calib)
        cos[name] = cosine(ref, run(model, feeds))
    assert cos["naive"] < 0.95, cos
    assert cos["smooth"] >= 0.995 and cos["hadamard"] >= 0.995, cos
