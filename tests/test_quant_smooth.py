"""smooth: function-preserving channel balancing, migration targets, planted outliers."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import onnx_ir as ir
import pytest
from quant_models import apply, cosine, feeds_for, ln_mlp, mlp, run

from genzip.errors import GenzipError
from genzip.passes.quant import _rotation
from genzip.passes.quant.smooth import hadamard

ANNOTATE = "annotate-precision{keep-defaults=false}"


pytestmark = pytest.mark.usefixtures("private_cache")


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


@pytest.mark.parametrize("k", [64, 48, 96, 384, 1152, 4608])
def test_hadamard_at_real_widths_is_orthonormal_and_plus_minus_one(k):
    """Sylvester x Paley cores: 48 = 12*4, 384 = 12*32, 1152 = 36*32, 4608 = 36*128 all exist.
    A ⊗ B is orthonormal with entries ±1/sqrt(k) exactly when A and B are (checked on the
    factors; the k x k product only where it is cheap)."""
    a, b = (f.astype(np.float64) for f in _rotation.hadamard_factors(k))
    assert a.shape[0] * b.shape[0] == k and max(a.shape[0], b.shape[0]) <= 128
    for f in (a, b):
        np.testing.assert_allclose(f @ f.T, np.eye(f.shape[0]), atol=1e-6)
        np.testing.assert_allclose(np.abs(f) * np.sqrt(f.shape[0]), 1.0, atol=1e-6)
    if k <= 1152:
        h = hadamard(k).astype(np.float64)
        np.testing.assert_allclose(h @ h.T, np.eye(k), atol=1e-5)
        w = np.random.default_rng(0).standard_normal((k, 3)).astype(np.float32)
        np.testing.assert_allclose(_rotation.rotate_weight(_rotation.hadamard_factors(k), w), h.T @ w, atol=1e-4)


def test_widths_without_a_built_in_hadamard():
    # 86 = 2*43: neither 43+1 nor 2*(43+1) nor 86 is a Paley order of a prime; 11008 = 43*256
    # needs order 172 (a prime power / Williamson construction, not built) or a core over 256.
    assert hadamard(86) is None and hadamard(11008) is None
    a, b = _rotation.random_factors(86, seed=3)
    r = _rotation.full((a, b)).astype(np.float64)
    np.testing.assert_allclose(r @ r.T, np.eye(86), atol=1e-5)
    np.testing.assert_array_equal(_rotation.full(_rotation.random_factors(86, seed=3)), r.astype(np.float32))


@pytest.mark.parametrize("k", [384, 1152, 4608])
def test_rotation_is_exact_with_quantization_off(k):
    model = ln_mlp(k=k, tokens=4, outlier=1.0)
    feeds = feeds_for(model, seed=9)[0]
    ref = run(model, feeds)
    results = apply(model, f"{ANNOTATE},smooth{{rotate=hadamard}}", feeds_for(model, seed=1, n=1))
    assert results[1].stats["rotated"] == 2  # both GEMM inputs are k wide
    ops = [n.op_type for n in model.graph]
    assert ops.count("MatMul") == 2 + 2 * 2  # each rotation: A^T . x . B, never one k x k MatMul
    rotation_dims = [d for name, v in model.graph.initializers.items() if "rotation" in name for d in v.const_value.shape]
    assert rotation_dims and max(rotation_dims) <= 128
    np.testing.assert_allclose(run(model, feeds), ref, rtol=1e-3, atol=1e-3)


def test_hadamard_refuses_a_width_it_cannot_rotate_and_random_rotates_it():
    model = ln_mlp(k=86, tokens=4, outlier=1.0)
    calib = feeds_for(model, seed=1, n=1)
    before = [n.op_type for n in model.graph]
    with pytest.raises(GenzipError, match=r"no Hadamard matrix of order 86.*use rotate=random"):
        apply(model, f"{ANNOTATE},smooth{{rotate=hadamard}}", calib)
    assert [n.op_type for n in model.graph] == before  # refused before anything changed
    feeds = feeds_for(model, seed=9)[0]
    ref = run(model, feeds)
    results = apply(model, f"{ANNOTATE},smooth{{rotate=random}}", calib)
    assert results[1].stats["rotated"] == 2
    np.testing.assert_allclose(run(model, feeds), ref, rtol=1e-3, atol=1e-3)


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
