"""annotate-precision{attention=int8} + quant: int8 QK^T scores for self-attention (quant_attention)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx.helper as oh
import onnx_ir as ir
import pytest
from quant_models import _model, apply, cosine, run

from genzip.backends.ort_backend import optimize_file
from genzip.ort_session import make_session
from genzip.passes.quant._spec import META_KEY

F = onnx.TensorProto.FLOAT
B, H, N, D = 2, 4, 64, 32


def attention_model(*, cross: bool = False, causal: bool = False, mask: bool = False, kv_heads: int = H,
                    k_offset: float = 0.0, seed: int = 0) -> ir.Model:
    """q, k, v = x * per-channel gains (self-attention: one ancestor), or k, v from ``c`` (cross).

    ``k_offset`` adds a constant vector to every key (the shared offset smoothing removes)."""
    rng = np.random.default_rng(seed)
    inits = {f"g{n}": (1 + 0.3 * rng.standard_normal(D)).astype(np.float32) for n in "qkv"}
    inits["koff"] = (k_offset * rng.standard_normal(D)).astype(np.float32)
    src = "c" if cross else "x"
    nodes = [oh.make_node("Mul", ["x", "gq"], ["q"]), oh.make_node("Mul", [src, "gk"], ["k0"]),
             oh.make_node("Add", ["k0", "koff"], ["k"]), oh.make_node("Mul", [src, "gv"], ["v"])]
    attn_inputs = ["q", "k", "v"]
    if mask:
        inits["mask"] = np.zeros((N, N), np.float32)
        attn_inputs.append("mask")
    nodes.append(oh.make_node("Attention", attn_inputs, ["y"], name="attn", scale=D ** -0.5, is_causal=int(causal)))
    inputs = [oh.make_tensor_value_info("x", F, [B, H, N, D])]
    if cross:
        inputs.append(oh.make_tensor_value_info("c", F, [B, kv_heads, N, D]))
    if kv_heads != H and not cross:
        raise ValueError("GQA needs cross=True here")
    model = _model(nodes, inputs, [oh.make_tensor_value_info("y", F, [B, H, N, D])], inits)
    # An export carries the shapes of q/k/v (the head counts decide what is supported).
    return ir.from_proto(onnx.shape_inference.infer_shapes(ir.to_proto(model)))


def _feeds(model: ir.Model, seed: int = 1, scale: float = 1.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {v.name: (scale * rng.standard_normal([int(d) for d in v.shape])).astype(np.float32)
            for v in model.graph.inputs}


def _quantized(model: ir.Model) -> list:
    return apply(model, "annotate-precision{attention=int8},calibrate,quant{scheme=w8a8}")


def _ops(model: ir.Model) -> list[str]:
    return [n.op_type for n in model.graph]


def test_self_attention_scores_are_int8_and_close_to_fp32():
    model = attention_model()
    feeds = _feeds(model)
    reference = run(attention_model(), feeds)
    results = _quantized(model)
    assert results[0].stats["attention_int8"] == 1 and results[2].stats["attention"] == 1
    ops = _ops(model)
    assert "Attention" not in ops
    assert ops.count("MatMulInteger") == 1 and ops.count("DynamicQuantizeLinear") == 1 and ops.count("Softmax") == 1
    assert not any(META_KEY in n.metadata_props for n in model.graph)
    y = run(model, feeds)
    assert cosine(y, reference) > 0.999
    assert not np.allclose(y, reference, atol=1e-6)  # the scores really were quantized


def test_ort_fuses_the_scores_into_an_int8_gemm(tmp_path):
    model = attention_model()
    feeds = _feeds(model)
    _quantized(model)
    src, dst = str(tmp_path / "a.onnx"), str(tmp_path / "a.ort.onnx")
    ir.save(model, src)
    optimize_file(src, dst)
    optimized = ir.load(dst)
    assert "MatMulIntegerToFloat" in _ops(optimized) and "MatMulInteger" not in _ops(optimized)
    np.testing.assert_allclose(make_session(dst).run(None, feeds)[0], run(model, feeds), rtol=1e-5, atol=1e-5)


def test_smoothing_removes_a_shared_key_offset():
    """A large common offset on every key leaves the softmax unchanged; the smoothed int8
    grid ignores it, so the quantized output stays as close as without the offset."""
    plain, offset = attention_model(seed=3), attention_model(seed=3, k_offset=100.0)
    feeds = _feeds(plain, seed=4)
    ref_plain, ref_offset = run(attention_model(seed=3), feeds), run(attention_model(seed=3, k_offset=100.0), feeds)
    _quantized(plain)
    _quantized(offset)
    assert cosine(run(offset, feeds), ref_offset) > 0.999
    assert cosine(run(offset, feeds), ref_offset) > cosine(run(plain, feeds), ref_plain) - 1e-3


def test_zero_inputs_give_finite_outputs():
    model = attention_model()
    _quantized(model)
    y = run(model, {"x": np.zeros((B, H, N, D), np.float32)})
    assert np.isfinite(y).all() and np.allclose(y, 0.0)


@pytest.mark.parametrize("kwargs, reason", [
    (dict(cross=True), None),  # cross-attention: not annotated at all
    (dict(causal=True), "causal or soft-capped attention"),
    (dict(mask=True), "attention with a mask or past state"),
    (dict(cross=True, kv_heads=2), None),
])
def test_other_attention_forms_stay_fp32(kwargs, reason):
    model = attention_model(**kwargs)
    feeds = _feeds(model)
    reference = run(attention_model(**kwargs), feeds)
    results = apply(model, "annotate-precision{attention=int8}")
    attn = next(n for n in model.graph if n.op_type == "Attention")
    raw = attn.metadata_props.get(META_KEY)
    if reason is None:
        assert raw is None and results[0].stats["attention_int8"] == 0
    else:
        assert json.loads(raw)["keep"] == reason and results[0].stats["attention_kept"] == 1
    model = attention_model(**kwargs)
    apply(model, "annotate-precision{attention=int8},quant{scheme=w8a8}")
    assert "Attention" in _ops(model) and "MatMulInteger" not in _ops(model)
    np.testing.assert_array_equal(run(model, feeds), reference)


def test_keep_regex_holds_an_attention_in_fp32():
    model = attention_model()
    results = apply(model, "annotate-precision{attention=int8 keep=attn}")
    assert results[0].stats["attention_kept"] == 1


def test_default_leaves_attention_alone():
    model = attention_model()
    apply(model, "annotate-precision,quant{scheme=w8a8}")
    assert "Attention" in _ops(model)


def test_bad_option_is_an_error():
    with pytest.raises(Exception, match="attention"):
        apply(attention_model(), "annotate-precision{attention=int4}")


def test_trt_lint_flags_the_int8_score_form():
    from genzip.backends.trt_lint import lint_model

    model = attention_model()
    _quantized(model)
    findings = lint_model(model)
    assert any("MatMulInteger" in str(f) for f in findings)
    assert not any("MatMulInteger" in str(f) for f in lint_model(attention_model()))


@pytest.mark.parametrize("rewrite", ["window-attn{window=0.125}", "share-attn{window=0.125}"])
def test_attention_rewrites_after_int8_scores_are_refused(rewrite):
    from genzip.errors import GenzipError

    model = attention_model()
    _quantized(model)
    with pytest.raises(GenzipError, match="attention=int8"):
        apply(model, f"canonicalize-attn,{rewrite}")
