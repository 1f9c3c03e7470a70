"""genzip.SpanAttention: the ONNX function body against an explicit-mask numpy reference."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from helpers_onnx import ort_session, qkv_inputs

from genzip.plugins import op_shapes, span_attention

SCALE = 0.3


def reference(q, k, v, spans, sinks, scale=SCALE):
    """Per-head causal span attention with sinks, from an explicit mask; GQA by head // G."""
    group = q.shape[1] // k.shape[1]
    n = q.shape[2]
    i, j = np.arange(n)[:, None], np.arange(n)[None]
    out = np.empty(q.shape[:3] + v.shape[3:])
    for h, span in enumerate(spans):
        mask = (j <= i) & ((j < sinks) | (i - j < span))
        s = np.einsum("bid,bjd->bij", q[:, h].astype(np.float64), k[:, h // group]) * scale
        s = np.where(mask, s, -np.inf)
        p = np.exp(s - s.max(-1, keepdims=True))
        out[:, h] = (p / p.sum(-1, keepdims=True)) @ v[:, h // group]
    return out


def session(spans, sinks, kv_heads=None, dim=8):
    kv_heads = kv_heads or len(spans)
    inputs = qkv_inputs("B", len(spans), "N", dim, kv_heads=kv_heads)
    model = ir.Model(ir.Graph(inputs, [], nodes=[], opset_imports={"": 23}, name="g"), ir_version=10)
    node = span_attention.make_node(model, inputs, spans=spans, sinks=sinks, scale=SCALE, kv_heads=kv_heads)
    model.graph.append(node)
    out = node.outputs[0]
    out.name, out.dtype, out.shape = "y", ir.DataType.FLOAT, ir.Shape(["B", len(spans), "N", dim])
    model.graph.outputs.append(out)
    return ort_session(model, threads=1), model


def check(sess, spans, sinks, n, kv_heads=None, batch=1, seed=0):
    rng = np.random.default_rng(seed)
    kv_heads = kv_heads or len(spans)
    q = rng.standard_normal((batch, len(spans), n, 8), dtype=np.float32)
    k, v = (rng.standard_normal((batch, kv_heads, n, 8), dtype=np.float32) for _ in range(2))
    (y,) = sess.run(None, {"q": q, "k": k, "v": v})
    np.testing.assert_allclose(y, reference(q, k, v, spans, sinks), atol=1e-5, err_msg=f"N={n} spans={spans}")
    return y


def test_spans_covering_sequence_are_dense_causal():
    spans = [60, 100, 60]
    sess, _ = session(spans, sinks=0)
    check(sess, spans, 0, 60)  # span >= N: plain causal attention
    sess, _ = session([5, 7, 5], sinks=64)
    check(sess, [10**6] * 3, 0, 60)  # sinks >= N make every earlier key visible


@pytest.mark.parametrize("spans,sinks", [([1, 2, 17, 3], 0), ([4, 33, 4, 9], 5), ([40, 40, 40, 40], 70)])
def test_ragged_lengths_match_explicit_mask(spans, sinks):
    sess, _ = session(spans, sinks)
    for n in (1, 7, 100, 257, 300):
        check(sess, spans, sinks, n, batch=2, seed=n)


@pytest.mark.parametrize("spans,kv_heads", [([5, 5, 9, 9, 3, 3], 3), ([5, 9, 5, 9, 5, 5], 2), ([7, 2, 30, 7], 1)])
def test_grouped_query_heads(spans, kv_heads):
    sess, _ = session(spans, sinks=2, kv_heads=kv_heads)
    for n in (3, 77):
        check(sess, spans, 2, n, kv_heads=kv_heads, seed=n)


def test_head_permutation_is_undone():
    spans = [3, 50, 3, 12, 50, 1]
    perm = [4, 2, 0, 5, 1, 3]
    rng = np.random.default_rng(7)
    q, k, v = (rng.standard_normal((1, 6, 90, 8), dtype=np.float32) for _ in range(3))
    y = session(spans, 4)[0].run(None, {"q": q, "k": k, "v": v})[0]
    shuffled = [spans[p] for p in perm]
    y2 = session(shuffled, 4)[0].run(None, {"q": q[:, perm], "k": k[:, perm], "v": v[:, perm]})[0]
    np.testing.assert_allclose(y2, y[:, perm], atol=1e-6)
    np.testing.assert_allclose(y, reference(q, k, v, spans, 4), atol=1e-5)


def test_head_groups_never_repeat_kv_heads():
    groups = span_attention.head_groups([5, 9, 5, 9, 5, 5], kv_heads=2)
    # KV head 0 has query heads 0,1,2 (spans 5,9,5); KV head 1 has 3,4,5 (9,5,5).
    assert groups == [(5, [0, 2, 4, 5], [0, 1]), (9, [1, 3], [0, 1])]
    for _, q_heads, kvs in groups:
        assert len(q_heads) % len(kvs) == 0
    assert span_attention.head_groups([4, 4, 6], kv_heads=1) == [(4, [0, 1], [0]), (6, [2], [0])]
    with pytest.raises(ValueError):
        span_attention.head_groups([4, 4, 6], kv_heads=2)


def test_function_structure():
    _, model = session([3, 3, 8, 8], sinks=2, kv_heads=2)
    proto = ir.to_proto(model)
    onnx.checker.check_model(proto)
    (func,) = proto.functions
    assert func.name == "SpanAttention" and func.overload.startswith("s2_kv2_")
    assert {n.domain for n in func.node} == {""}
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in proto.graph.node[0].attribute}
    assert attrs == {"spans": [3, 3, 8, 8], "sinks": 2, "scale": pytest.approx(SCALE)}
    with pytest.raises(ValueError):
        span_attention.build_function([0, 3], 0, 2, 23)


def test_op_shapes_span():
    (y,) = op_shapes.span_attention((1, 8, "N", 64), (1, 2, "N", 64), (1, 2, "N", 64), ("float16",) * 3,
                                    spans=[4] * 8, sinks=4)
    assert y == ((1, 8, "N", 64), "float16")
    with pytest.raises(op_shapes.ShapeError, match="len\\(spans\\)"):
        op_shapes.span_attention((1, 8, 5, 4), (1, 8, 5, 4), (1, 8, 5, 4), spans=[4] * 4, sinks=0)
    with pytest.raises(op_shapes.ShapeError, match="multiple"):
        op_shapes.span_attention((1, 6, 5, 4), (1, 4, 5, 4), (1, 4, 5, 4), spans=[4] * 6, sinks=0)
    with pytest.raises(op_shapes.ShapeError, match="spans"):
        op_shapes.span_attention(None, None, None, spans=[0], sinks=0)
    with pytest.raises(op_shapes.ShapeError, match="floating"):
        op_shapes.span_attention(None, None, None, ("int64", None, None), spans=[1], sinks=0)
