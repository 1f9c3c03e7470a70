"""smooth{ranges=K}: ViDiT-Q's timestep-wise channel balancing, one weight per timestep range."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import onnx_ir as ir
import pytest
from quant_models import apply, cosine, run

from genzip.errors import GenzipError
from genzip.passes.infra.context import PassContext
from genzip.passes.infra.pipeline import build_pipeline
from genzip.passes.quant import _ranges

ANNOTATE = "annotate-precision{keep-defaults=false scheme=SCHEME}"
EARLY, LATE = [0, 1, 2, 3], [8, 9, 10, 11]  # the outlier channels below / above t = 500


pytestmark = pytest.mark.usefixtures("private_cache")


def _model() -> ir.Model:
    """x [2, 16, 32] -> MatMul -> Relu -> MatMul, plus the timestep (read by the output)."""
    rng = np.random.default_rng(0)
    inits = [onh.from_array(a, n) for n, a in {
        "w0": rng.standard_normal((32, 48)).astype(np.float32) * 0.2,
        "w1": rng.standard_normal((48, 8)).astype(np.float32) * 0.2,
        "shape": np.array([2, 1, 1], np.int64), "tiny": np.array(1e-3, np.float32),
    }.items()]
    nodes = [oh.make_node("MatMul", ["x", "w0"], ["h"], name="mm0"), oh.make_node("Relu", ["h"], ["r"], name="relu"),
             oh.make_node("MatMul", ["r", "w1"], ["m"], name="mm1"),
             oh.make_node("Reshape", ["timestep", "shape"], ["t3"], name="t3"),
             oh.make_node("Mul", ["t3", "tiny"], ["ts"], name="ts"), oh.make_node("Add", ["m", "ts"], ["y"], name="y")]
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 16, 32]),
                                       oh.make_tensor_value_info("timestep", onnx.TensorProto.FLOAT, [2])],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 16, 8])], inits)
    return ir.from_proto(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 23)], ir_version=10))


def _feeds(t: float, seed: int) -> dict[str, np.ndarray]:
    """Activation outliers whose channels move with the timestep (what ranges are for)."""
    x = np.random.default_rng(seed).standard_normal((2, 16, 32)).astype(np.float32)
    x[..., EARLY if t < 500 else LATE] *= 60.0
    return {"x": x, "timestep": np.full(2, t, np.float32)}


CALIB = [_feeds(t, seed) for seed in range(2) for t in (999.0, 750.0, 250.0, 0.0)]


def test_split_points_and_the_graph_index_agree():
    points = _ranges.split_points([999, 750, 250, 0, 999], 2, "smooth")
    np.testing.assert_allclose(points, [500.0])
    assert [_ranges.range_of(t, points) for t in (0, 250, 750, 999)] == [0, 0, 1, 1]
    assert len(_ranges.split_points([999, 750, 500, 250, 0], 3, "smooth")) == 2


@pytest.mark.parametrize("rotate", ["none", "hadamard"])
def test_ranges_keep_the_function_at_every_timestep(rotate):
    model = _model()
    results = apply(model, f"{ANNOTATE.replace('SCHEME', 'w8a8-dynamic')},smooth{{ranges=2 rotate={rotate}}}", CALIB)
    smooth = results[1]
    assert smooth.modified and smooth.stats["ranges"] == 2 and smooth.stats["mul"] == 2
    ops = [n.op_type for n in model.graph]
    assert ops.count("Gather") >= 4 and "ReduceSum" in ops
    for t in (999.0, 100.0):
        feeds = _feeds(t, seed=7)
        np.testing.assert_allclose(run(model, feeds), run(_model(), feeds), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("scheme", ["w8a8-dynamic", "w4a8-dynamic", "w8a8"])
def test_each_range_quantizes_like_a_model_calibrated_on_that_range_alone(scheme):
    """At a timestep of range k the ranged model computes what ranges=1 smoothing calibrated on
    range k's samples computes (same scales, same quantized weights); with int8 weights it beats
    ranges=1 on all samples, whose balancing must serve both outlier sets."""
    calib = "calibrate," if scheme == "w8a8" else ""
    spec = ANNOTATE.replace("SCHEME", scheme)
    ranged = _model()
    apply(ranged, f"{spec},smooth{{ranges=2}},{calib}quant{{scheme={scheme}}}", CALIB)
    assert "Gather" in [n.op_type for n in ranged.graph]
    pooled = _model()
    apply(pooled, f"{spec},smooth,{calib}quant{{scheme={scheme}}}", CALIB)
    for t in (900.0, 100.0):
        own = _model()
        same_range = [f for f in CALIB if (f["timestep"][0] >= 500) == (t >= 500)]
        # static activations: the ranged model's one activation range comes from all samples
        apply(own, f"{spec},smooth", same_range)
        rest = build_pipeline(f"{calib}quant{{scheme={scheme}}}", initial_facts=frozenset({"quant-annotated"}))
        for p in rest.passes:
            p(own, PassContext(calibration=CALIB))
        feeds = _feeds(t, seed=11)
        ref = run(_model(), feeds)
        got = run(ranged, feeds)
        if scheme != "w8a8":  # the static range differs: own's X' is scaled for one range only
            assert cosine(got, run(own, feeds)) > 0.99999
        if scheme.startswith("w8"):  # at int4 weights the weight error dominates: no order either way
            assert cosine(got, ref) > cosine(run(pooled, feeds), ref), (scheme, t)


def test_ranges_refuse_what_they_cannot_select():
    model = _model()
    with pytest.raises(GenzipError, match="no input 'step'"):
        apply(model, f"{ANNOTATE.replace('SCHEME', 'w8a8-dynamic')},smooth{{ranges=2 timestep=step}}", CALIB)
    with pytest.raises(GenzipError, match="ranges=3 needs at least 3 distinct timesteps"):
        apply(_model(), f"{ANNOTATE.replace('SCHEME', 'w8a8-dynamic')},smooth{{ranges=3}}",
              [_feeds(t, 0) for t in (999.0, 0.0)])
    with pytest.raises(GenzipError, match="per-block int4 weights"):
        apply(_model(), f"{ANNOTATE.replace('SCHEME', 'w4a8')},smooth{{ranges=2}}", CALIB)
