"""legalize-trt: Attention the targeted TensorRT parser lacks becomes MatMul/Softmax/MatMul, same numbers."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
import onnxruntime as ort
import pytest

from genzip.errors import GenzipError
from genzip.passes import build_pipeline
from genzip.passes.infra.invariants import check_full
from genzip.passes.lowering.legalize_trt import LegalizeTrtOptions, LegalizeTrtPass

HEADER = '<ir_version: 10, opset_import: ["" : 23]>\n'


def model_of(body: str) -> onnx.ModelProto:
    return onnx.parser.parse_model(HEADER + body)


def legalize(proto: onnx.ModelProto, version: str = "10.13"):
    model = ir.from_proto(proto)
    result = LegalizeTrtPass(LegalizeTrtOptions(trt_version=version))(model)
    check_full(model)
    return model, result


def ops(model: ir.Model) -> collections.Counter:
    return collections.Counter(n.op_type for n in model.graph)


def feeds_for(proto: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in proto.graph.input:
        shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
        if value.type.tensor_type.elem_type == onnx.TensorProto.BOOL:
            mask = rng.random(shape) > 0.4
            mask[..., 0] = True  # no fully masked row: the spec and the decomposition differ only there
            feeds[value.name] = mask
        else:
            feeds[value.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def assert_same_numbers(before: onnx.ModelProto, after: ir.Model) -> None:
    feeds = feeds_for(before)
    want = ort.InferenceSession(before.SerializeToString()).run(None, feeds)
    got = ort.InferenceSession(ir.to_proto(after).SerializeToString()).run(None, feeds)
    assert len(want) == len(got)
    for w, g in zip(want, got):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


MHA = """g (float[2,4,8,16] q, float[2,4,8,16] k, float[2,4,8,16] v) => (float[2,4,8,16] y) {
  y = Attention <scale: float = 0.25> (q, k, v)
}"""


def test_mha_is_decomposed_for_10_13_with_same_numbers():
    proto = model_of(MHA)
    model, result = legalize(proto)
    assert result.modified and result.stats["decomposed"] == 1
    counts = ops(model)
    assert counts["Attention"] == 0
    assert counts["MatMul"] == 2 and counts["Softmax"] == 1 and counts["Transpose"] == 1 and counts["Mul"] == 1
    assert_same_numbers(proto, model)


def test_native_attention_on_10_15_is_left_alone():
    model, result = legalize(model_of(MHA), "10.15")
    assert not result.modified and ops(model)["Attention"] == 1


def test_no_attention_means_no_change():
    proto = model_of("g (float[2,3] x) => (float[2,3] y) { y = Relu(x) }")
    model, result = legalize(proto)
    assert not result.modified and result.stats["decomposed"] == 0
    untouched = ir.to_proto(ir.from_proto(proto))
    assert ir.to_proto(model).SerializeToString() == untouched.SerializeToString()


def test_causal_with_boolean_mask():
    proto = model_of("""g (float[1,2,6,8] q, float[1,2,10,8] k, float[1,2,10,8] v, bool[1,1,6,10] m)
        => (float[1,2,6,8] y) {
      y = Attention <is_causal: int = 1> (q, k, v, m)
    }""")
    model, result = legalize(proto)
    assert result.stats["decomposed"] == 1 and ops(model)["Where"] >= 1
    assert_same_numbers(proto, model)


def test_grouped_query_attention_repeats_kv_heads():
    proto = model_of("""g (float[2,8,5,16] q, float[2,2,5,16] k, float[2,2,5,16] v) => (float[2,8,5,16] y) {
      y = Attention <is_causal: int = 1> (q, k, v)
    }""")
    model, result = legalize(proto)
    assert result.stats["decomposed"] == 1 and ops(model)["Expand"] == 2
    assert_same_numbers(proto, model)


def test_3d_gqa_with_kv_cache_and_present_outputs():
    proto = model_of("""g (float[2,3,64] q, float[2,3,32] k, float[2,3,32] v, float[2,2,4,16] pk, float[2,2,4,16] pv)
        => (float[2,3,64] y, float[2,2,7,16] presk, float[2,2,7,16] presv) {
      y, presk, presv = Attention <q_num_heads: int = 4, kv_num_heads: int = 2, is_causal: int = 1>
                                  (q, k, v, , pk, pv)
    }""")
    model, result = legalize(proto, "10.15")  # 3D and a KV cache are outside 10.15's Attention importer
    assert result.stats["decomposed"] == 1 and ops(model)["Attention"] == 0
    assert_same_numbers(proto, model)


def test_softcap_and_additive_mask():
    proto = model_of("""g (float[1,2,4,8] q, float[1,2,4,8] k, float[1,2,4,8] v, float[4,4] m) => (float[1,2,4,8] y) {
      y = Attention <softcap: float = 2.0> (q, k, v, m)
    }""")
    model, _ = legalize(proto)
    assert ops(model)["Tanh"] == 1
    assert_same_numbers(proto, model)


def test_low_rank_mask_on_10_15_only_gets_unsqueezed():
    proto = model_of("""g (float[1,2,4,8] q, float[1,2,4,8] k, float[1,2,4,8] v, float[4,4] m) => (float[1,2,4,8] y) {
      y = Attention (q, k, v, m)
    }""")
    model, result = legalize(proto, "10.15")
    assert result.stats["masks_unsqueezed"] == 1 and ops(model)["Attention"] == 1
    assert_same_numbers(proto, model)


def test_used_qk_output_is_kept_with_a_count():
    proto = model_of("""g (float[1,2,4,8] q, float[1,2,4,8] k, float[1,2,4,8] v)
        => (float[1,2,4,8] y, float[1,2,4,4] s) {
      y, a, b, s = Attention (q, k, v)
    }""")
    model, result = legalize(proto)
    assert not result.modified and result.stats["kept"] == 1 and ops(model)["Attention"] == 1


def test_spec_option_and_fact():
    pipeline = build_pipeline("canonicalize-attn,legalize-trt{trt-version=10.13},dce")
    assert str(pipeline) == "canonicalize-attn,legalize-trt{trt-version=10.13},dce"
    assert "attention-canonical" in type(pipeline.passes[1]).invalidates_facts
    with pytest.raises(GenzipError, match="not a version"):
        build_pipeline("legalize-trt{trt-version=latest}")


def test_dynamic_lengths_and_head_size_build_masks_and_scale_at_run_time():
    proto = model_of("""g (float[1,2,S,D] q, float[1,2,S,D] k, float[1,2,S,D] v) => (float[1,2,S,D] y) {
      y = Attention <is_causal: int = 1> (q, k, v)
    }""")
    model, _ = legalize(proto)
    assert ops(model)["Range"] == 2 and ops(model)["Sqrt"] == 1
    rng = np.random.default_rng(3)
    feeds = {n: rng.standard_normal((1, 2, 7, 12)).astype(np.float32) for n in "qkv"}
    want = ort.InferenceSession(proto.SerializeToString()).run(None, feeds)[0]
    got = ort.InferenceSession(ir.to_proto(model).SerializeToString()).run(None, feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
