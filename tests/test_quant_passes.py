"""annotate-precision, calibrate and quant on small hand-built models."""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir
import pytest
from quant_models import apply, conv, cosine, feeds_for, gemm, mlp, producer_op, run

from genzip.errors import GenzipError
from genzip.ort_session import make_session
from genzip.passes import build_pipeline, get_pass_class
from genzip.passes.infra.spec import parse_pipeline, print_pipeline
from genzip.passes.quant._spec import CALIB_KEY, META_KEY, QuantSpec, spec_of

NO_KEEP = "annotate-precision{keep-defaults=false}"


pytestmark = pytest.mark.usefixtures("private_cache")


def _nodes(model, op):
    return [n for n in model.graph if n.op_type == op]


def test_annotation_json_schema():
    model = mlp()
    (result,) = apply(model, NO_KEEP)
    assert result.modified and result.stats == {"annotated": 3, "quantized": 3, "kept": 0}
    body = json.loads(_nodes(model, "MatMul")[0].metadata_props[META_KEY])
    assert body == {
        "v": 1, "scheme": "w8a8", "op": "MatMul", "module": "mm0", "keep": None, "bos": False,
        "weight": {"input": 1, "dtype": "int8", "granularity": "per-channel", "axis": 1,
                   "block_size": None, "dynamic": False, "symmetric": True},
        "activation": {"input": 0, "dtype": "int8", "granularity": "per-tensor", "axis": None,
                       "block_size": None, "dynamic": False, "symmetric": True},
    }
    spec = spec_of(_nodes(model, "MatMul")[0])
    assert QuantSpec.from_json(spec.to_json()) == spec


def test_default_keeps_first_and_last_and_regex_keep():
    model = mlp()
    apply(model, "annotate-precision")
    keeps = [spec_of(n).keep for n in _nodes(model, "MatMul")]
    assert keeps == ["first layer", None, "last layer"]
    model = mlp()
    apply(model, "annotate-precision{keep-defaults=false keep=mm1$}")
    assert [spec_of(n).keep for n in _nodes(model, "MatMul")] == [None, "keep mm1$", None]
    model = mlp()
    apply(model, "annotate-precision{keep-defaults=false include=mm[02]}")
    assert [spec_of(n).keep is None for n in _nodes(model, "MatMul")] == [True, False, True]


def test_quantize_regex_overrides_the_default_keeps_only():
    """quantize=RE quantizes what a default rule (here: first layer) keeps; an explicit keep still wins."""
    model = mlp()
    apply(model, "annotate-precision{quantize=mm0}")
    assert [spec_of(n).keep for n in _nodes(model, "MatMul")] == [None, None, "last layer"]
    model = mlp()
    apply(model, "annotate-precision{quantize=mm[02] keep=mm2}")
    assert [spec_of(n).keep for n in _nodes(model, "MatMul")] == [None, None, "keep mm2"]
    with pytest.raises(GenzipError, match="bad regex"):
        apply(mlp(), "annotate-precision{quantize=(}")


def test_annotate_nothing_to_do_is_unmodified():
    model = conv()
    before = ir.to_proto(model).graph.SerializeToString()
    (result,) = apply(model, "annotate-precision{ops=MatMul}")
    assert result.modified is False
    assert ir.to_proto(model).graph.SerializeToString() == before  # only the fact is recorded


@pytest.mark.parametrize("factory,axis,channels", [(mlp, 1, None), (conv, 0, 6), (gemm, 0, 12)])
def test_per_channel_axis(factory, axis, channels):
    model = factory()
    calib = feeds_for(model, seed=1, n=4)
    feeds = feeds_for(model, seed=99)[0]
    ref = run(model, feeds)
    apply(model, f"{NO_KEEP},calibrate,quant{{scheme=w8a8}}", calib)
    for dq in _nodes(model, "DequantizeLinear"):
        q = dq.inputs[0]
        if q.const_value is None:
            continue  # activation DQ
        assert dq.attributes.get_int("axis") == axis
        assert q.const_value.dtype == ir.DataType.INT8
        assert dq.inputs[1].const_value.shape[0] == q.const_value.shape[axis]
        if channels:
            assert q.const_value.shape[axis] == channels
    assert cosine(ref, run(model, feeds)) > 0.999


def test_w8a8_qdq_counts_and_placement():
    model = mlp()
    calib = feeds_for(model, seed=1, n=4)
    feeds = feeds_for(model, seed=99)[0]
    ref = run(model, feeds)
    results = apply(model, f"{NO_KEEP},calibrate,quant{{scheme=w8a8}}", calib)
    assert results[2].stats["Q"] == 3 and results[2].stats["DQ"] == 6
    for mm in _nodes(model, "MatMul"):
        act, weight = mm.inputs[0].producer(), mm.inputs[1].producer()
        assert act.op_type == "DequantizeLinear" and producer_op(act.inputs[0]) == "QuantizeLinear"
        assert act.inputs[2].const_value.dtype == ir.DataType.INT8
        assert int(act.inputs[2].const_value.numpy()) == 0
        assert weight.op_type == "DequantizeLinear" and weight.inputs[0].is_initializer()
        assert not np.any(weight.inputs[2].const_value.numpy())
    assert not any(META_KEY in n.metadata_props or CALIB_KEY in n.metadata_props for n in model.graph)
    assert "w0" not in model.graph.initializers  # the fp32 weight is gone
    assert cosine(ref, run(model, feeds)) > 0.999


def test_scale_floor_zero_range_gives_finite_outputs():
    model = mlp()
    model.graph.initializers["w1"].const_value = ir.tensor(np.zeros((32, 16), np.float32), name="w1")
    zeros = [{"x": np.zeros((2, 8, 16), np.float32)}]
    apply(model, f"{NO_KEEP},calibrate,quant{{scheme=w8a8}}", zeros)
    for value in model.graph.initializers.values():
        arr = value.const_value.numpy()
        assert np.all(np.isfinite(arr.astype(np.float32)))
    for feeds in (zeros[0], feeds_for(model, seed=3)[0]):
        assert np.all(np.isfinite(run(model, feeds)))


def test_calibration_cache_miss_then_hit(tmp_path):
    calib = feeds_for(mlp(), seed=1, n=3)
    spec = f"{NO_KEEP},calibrate{{cache={tmp_path}}}"
    first, second = mlp(), mlp()
    assert apply(first, spec, calib)[1].stats["cache"] == "miss"
    assert apply(second, spec, calib)[1].stats["cache"] == "hit"
    files = list((tmp_path / "calibration").glob("*.json"))
    assert len(files) == 1 and set(json.loads(files[0].read_text())["amax"]) == {"x", "h0", "h1"}
    assert [n.metadata_props.get(CALIB_KEY) for n in first.graph] == [n.metadata_props.get(CALIB_KEY) for n in second.graph]
    other = feeds_for(mlp(), seed=2, n=3)
    assert apply(mlp(), spec, other)[1].stats["cache"] == "miss"
    assert apply(mlp(), f"{NO_KEEP},calibrate{{cache={tmp_path} method=mse}}", calib)[1].stats["cache"] == "miss"


def test_calibration_npz_file(tmp_path):
    path = tmp_path / "calib.npz"
    np.savez(path, x=np.random.default_rng(0).standard_normal((3, 2, 8, 16)).astype(np.float32))
    model = mlp()
    results = apply(model, f"{NO_KEEP},calibrate{{data={path} samples=2}},quant")
    assert results[1].stats["samples"] == 2 and results[2].stats["quantized"] == 3


@pytest.mark.parametrize("calib,match", [
    ([], "empty"),
    ([{"x": np.zeros((2, 8, 15), np.float32)}], "shape"),
    ([{"x": np.zeros((2, 8), np.float32)}], "shape"),
    ([{"z": np.zeros((2, 8, 16), np.float32)}], "inputs"),
    ([{"x": np.zeros((2, 8, 16), np.float64)}], "float64"),
    (None, "no calibration data"),
])
def test_bad_calibration_sets(calib, match):
    with pytest.raises(GenzipError, match=match):
        apply(mlp(), f"{NO_KEEP},calibrate", calib)


def calibration_samples():
    """A generator function for calibrate{data=module:function}."""
    return feeds_for(mlp(), seed=4, n=2)


def test_calibration_generator_function():
    results = apply(mlp(), f"{NO_KEEP},calibrate{{data=test_quant_passes:calibration_samples}}")
    assert results[1].stats["samples"] == 2
    with pytest.raises(GenzipError, match="cannot load calibration function"):
        apply(mlp(), f"{NO_KEEP},calibrate{{data=test_quant_passes:nope}}")


def test_bad_npz_and_missing_file(tmp_path):
    with pytest.raises(GenzipError, match="does not exist"):
        apply(mlp(), f"{NO_KEEP},calibrate{{data={tmp_path}/nope.npz}}")
    path = tmp_path / "obj.npz"
    np.savez(path, x=np.array([object()], dtype=object))
    with pytest.raises(GenzipError, match="plain .npz"):
        apply(mlp(), f"{NO_KEEP},calibrate{{data={path}}}")


def test_unknown_scheme_and_pipeline_errors():
    with pytest.raises(GenzipError, match="did you mean: w8a8-dynamic"):
        build_pipeline("annotate-precision{scheme=w8a8-dynamc}")
    with pytest.raises(GenzipError, match="did you mean: w8a8"):
        build_pipeline("annotate-precision,quant{scheme=w8a9}")
    with pytest.raises(GenzipError, match="put annotate-precision before it"):
        build_pipeline("quant")
    with pytest.raises(GenzipError, match="put calibrate before quant"):
        apply(mlp(), f"{NO_KEEP},quant")
    with pytest.raises(GenzipError, match="annotated for w8a8"):
        apply(mlp(), f"{NO_KEEP},quant{{scheme=w4a16}}")
    with pytest.raises(GenzipError, match="opset >= 21"):
        apply(mlp(opset=19), "annotate-precision{scheme=w4a16},quant")


def test_ensures_fails_on_unconsumed_annotation():
    model = mlp()
    apply(model, NO_KEEP)
    with pytest.raises(ir.passes.PostconditionError, match="unconsumed"):
        get_pass_class("quant")().ensures(model)


@pytest.mark.parametrize("form,op", [("ort", "MatMulIntegerToFloat"), ("onnx", "MatMulInteger")])
def test_w8a8_dynamic_is_per_token_int8_gemm(form, op):
    model = mlp(tokens=6)
    feeds = feeds_for(model, seed=5)[0]
    feeds["x"][0, 2] *= 1000.0  # one loud token must not hurt the others (per-token scales)
    ref = run(model, feeds)
    spec = f"annotate-precision{{scheme=w8a8-dynamic keep-defaults=false}},quant{{scheme=w8a8-dynamic dynamic-form={form}}}"
    (_, result) = apply(model, spec)
    assert result.stats["MatMulInteger"] == 3 and result.stats["DQ"] == 0 and result.stats["Q"] == 3
    assert len(_nodes(model, op)) == 3 and not _nodes(model, "MatMul")
    assert ("com.microsoft" in model.opset_imports) == (form == "ort")
    for mmi in _nodes(model, op):
        assert mmi.inputs[0].producer().op_type == "QuantizeLinear"
        assert mmi.inputs[0].producer().inputs[2].const_value.dtype == ir.DataType.UINT8
        assert mmi.inputs[1].const_value.dtype == ir.DataType.INT8
    got = run(model, feeds)
    assert cosine(ref[0, 2], got[0, 2]) > 0.999
    assert cosine(ref[0, 0], got[0, 0]) > 0.999
    assert cosine(ref, got) > 0.999


@pytest.mark.parametrize("form", ["ort", "onnx"])
def test_w4a8_dynamic_is_per_channel_int4_weights_with_per_token_activations(form):
    """ViDiT-Q's W4A8: int4 weights (stored int4, widened to int8 for ORT's int8 GEMM)."""
    model = mlp(tokens=6, dims=(64, 64, 32))
    feeds = feeds_for(model, seed=5)[0]
    ref = run(model, feeds)
    w8 = mlp(tokens=6, dims=(64, 64, 32))
    apply(w8, "annotate-precision{scheme=w8a8-dynamic keep-defaults=false},quant")
    spec = f"annotate-precision{{scheme=w4a8-dynamic keep-defaults=false}},quant{{scheme=w4a8-dynamic dynamic-form={form}}}"
    (_, result) = apply(model, spec)
    op = "MatMulIntegerToFloat" if form == "ort" else "MatMulInteger"
    assert result.stats["MatMulInteger"] == 2 and len(_nodes(model, op)) == 2 and not _nodes(model, "MatMul")
    for mmi in _nodes(model, op):
        cast = mmi.inputs[1].producer()
        assert cast.op_type == "Cast" and cast.inputs[0].const_value.dtype == ir.DataType.INT4
        q = cast.inputs[0].const_value.numpy().astype(np.int8)
        assert q.min() >= -8 and q.max() <= 7 and len(np.unique(q)) > 8  # 4-bit levels, all used
    got, got8 = run(model, feeds), run(w8, feeds)
    assert 0.98 < cosine(ref, got) < cosine(ref, got8)  # int4 weights: close, and coarser than int8
    assert result.stats["weight_ratio"] < 0.2  # int4 + fp32 scales vs fp32 weights


def test_dynamic_gemm_with_bias():
    model = gemm()
    feeds = feeds_for(model, seed=5)[0]
    ref = run(model, feeds)
    apply(model, "annotate-precision{scheme=w8a8-dynamic keep-defaults=false},quant")
    assert len(_nodes(model, "MatMulIntegerToFloat")) == 1 and not _nodes(model, "Gemm")
    assert cosine(ref, run(model, feeds)) > 0.999


def _with_bos(feeds: list[dict], bos: np.ndarray) -> list[dict]:
    """The same prompt-invariant token 0 (a CLIP-style BOS with outliers) in every sample."""
    for f in feeds:
        f["x"][:, 0, :] = bos
    return feeds


@pytest.mark.parametrize("scheme", ["w8a8", "w8a8-dynamic"])
def test_bos_token_stays_exact(scheme):
    """MixDQ: token 0's output is a precomputed constant (no fp32 weight copy), exact."""
    model = mlp(tokens=6)
    bos = np.random.default_rng(3).standard_normal(16).astype(np.float32) * 30.0
    feeds = _with_bos(feeds_for(model, seed=7), bos)[0]
    ref = run(model, feeds)
    calib = _with_bos(feeds_for(model, seed=1, n=4), bos)
    spec = f"annotate-precision{{scheme={scheme} keep-defaults=false bos=true bos-layers=.}},calibrate,quant"
    results = apply(model, spec, calib)
    assert results[-1].stats["bos"] == 3 and results[1].stats["bos_tensors"] == 3
    # no fp32 weight copy kept for token 0: every float MatMul left reads a dequantized weight
    assert all(n.inputs[1].producer().op_type == "DequantizeLinear" for n in model.graph if n.op_type == "MatMul")
    assert sum(n.op_type == "Expand" for n in model.graph) == 3
    got = run(model, feeds)
    np.testing.assert_allclose(got[:, 0], ref[:, 0], rtol=1e-4, atol=1e-4)
    assert cosine(ref[:, 1:], got[:, 1:]) > 0.995
    assert not np.allclose(got[:, 1:], ref[:, 1:], rtol=1e-5, atol=1e-6)


def test_bos_is_refused_where_token_0_is_an_ordinary_word():
    """T5-style conditioning: token 0 varies with the prompt, so it is no BOS to precompute."""
    model = mlp(tokens=6)
    spec = "annotate-precision{scheme=w8a8-dynamic keep-defaults=false bos=true bos-layers=.}"
    with pytest.raises(GenzipError, match=r"token 0 differs across the calibration prompts \(relative spread"):
        apply(model, spec + ",calibrate,quant", feeds_for(model, seed=1, n=4))
    with pytest.raises(GenzipError, match="put calibrate before quant"):
        apply(mlp(tokens=6), spec + ",quant", feeds_for(model, seed=1, n=4))


def test_w4a16_block_dequantize():
    model = mlp(dims=(64, 128, 64))
    feeds = feeds_for(model, seed=5)[0]
    ref = run(model, feeds)
    (_, result) = apply(model, "annotate-precision{scheme=w4a16 keep-defaults=false block=32},quant")
    assert result.stats["DQ"] == 2 and result.stats["Q"] == 0
    dq = _nodes(model, "DequantizeLinear")[0]
    assert dq.attributes.get_int("block_size") == 32 and dq.attributes.get_int("axis") == 0
    assert dq.inputs[0].const_value.dtype == ir.DataType.INT4
    assert list(dq.inputs[1].const_value.shape) == [2, 128]
    assert result.stats["weight_ratio"] < 0.2
    assert cosine(ref, run(model, feeds)) > 0.99


def test_fp8_e4m3_numerics():
    model = mlp()
    feeds = feeds_for(model, seed=5)[0]
    ref = run(model, feeds)
    apply(model, "annotate-precision{scheme=fp8 keep-defaults=false},calibrate,quant{scheme=fp8}", feeds_for(model, 1, 4))
    weights = [dq.inputs[0].const_value for dq in _nodes(model, "DequantizeLinear") if dq.inputs[0].is_initializer()]
    assert weights and all(w.dtype == ir.DataType.FLOAT8E4M3FN for w in weights)
    assert cosine(ref, run(model, feeds)) > 0.995


@pytest.mark.parametrize("spec", [
    "annotate-precision{scheme=w8a8-dynamic bos=true},quant{scheme=w8a8-dynamic}",
    "annotate-precision{keep=proj_out,norm},calibrate{samples=8 method=percentile percentile=99.9},quant",
    "annotate-precision{scheme=w4a16 block=64},quant{scheme=w4a16}",
])
def test_spec_round_trip(spec):
    assert print_pipeline(parse_pipeline(spec)) == spec
    build_pipeline(spec)


@pytest.mark.parametrize("spec,clean", [
    ("annotate-precision{keep-defaults=false},calibrate,quant{scheme=w8a8}", True),
    ("annotate-precision{scheme=fp8 keep-defaults=false},calibrate,quant{scheme=fp8}", True),
    ("annotate-precision{scheme=w4a16 keep-defaults=false},quant", True),
    ("annotate-precision{scheme=w8a8-dynamic keep-defaults=false},quant", False),  # ORT-only form
])
def test_tensorrt_lint_accepts_the_deploy_forms(spec, clean):
    from genzip.backends.trt_lint import lint_model

    model = mlp(dims=(64, 64, 64, 32))
    apply(model, spec, feeds_for(model, seed=1, n=2))
    findings = lint_model(model)
    assert (not findings) == clean, findings


def _siblings() -> ir.Model:
    """q/k/v-like: three MatMuls read one tensor."""
    import onnx
    import onnx.helper as oh
    import onnx.numpy_helper as onh

    rng = np.random.default_rng(0)
    inits = [onh.from_array((rng.standard_normal((16, n)) * 0.25).astype(np.float32), f"w{i}")
             for i, n in enumerate((16, 16, 8))]
    nodes = [oh.make_node("MatMul", ["x", f"w{i}"], [f"y{i}"], name=f"mm{i}") for i in range(3)]
    outs = [oh.make_tensor_value_info(f"y{i}", onnx.TensorProto.FLOAT, None) for i in range(3)]
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 6, 16])], outs, inits)
    return ir.from_proto(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 23)], ir_version=10))


@pytest.mark.parametrize("scheme", ["w8a8", "w8a8-dynamic"])
def test_sibling_merge_is_exact(scheme):
    feeds = feeds_for(_siblings(), seed=3)[0]
    calib = feeds_for(_siblings(), seed=1, n=2)
    spec = f"annotate-precision{{scheme={scheme} keep-defaults=false}},calibrate,quant{{merge="

    outs = {}
    for merge in ("true", "false"):
        model = _siblings()
        result = apply(model, spec + merge + "}", calib)[-1]
        assert result.stats["merged"] == (3 if merge == "true" else 0)
        gemms = [n for n in model.graph if n.op_type in ("MatMul", "MatMulIntegerToFloat")]
        assert len(gemms) == (1 if merge == "true" else 3)
        assert [v.name for v in model.graph.outputs] == ["y0", "y1", "y2"]
        sess = make_session(ir.to_proto(model).SerializeToString())
        outs[merge] = sess.run(None, feeds)
    for a, b in zip(outs["true"], outs["false"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
