"""genzip.WindowAttention: the ONNX function body against an explicit-mask numpy reference."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from helpers_onnx import ort_session, qkv_inputs

from genzip.plugins import op_shapes, window_attention
from genzip.plugins.onnx_fn import GENZIP_DOMAIN

SCALE = 0.3


def reference(q, k, v, mask, scale=SCALE):
    """Softmax attention with a boolean [N, N] mask (True = visible); GQA by head // G."""
    group = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    s = np.einsum("bhid,bhjd->bhij", q.astype(np.float64), k) * scale
    s = np.where(mask, s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ v


def band(n, w):
    i, j = np.arange(n)[:, None], np.arange(n)[None]
    return np.abs(i - j) <= w


def session(window, *, heads=2, kv_heads=None, dim=8, residual=False, chunk=None):
    """A model with dynamic batch and sequence around one WindowAttention node."""
    kv_heads = kv_heads or heads
    inputs = qkv_inputs("B", heads, "N", dim, kv_heads=kv_heads)
    model = ir.Model(ir.Graph(inputs, [], nodes=[], opset_imports={"": 23}, name="g"), ir_version=10)
    node = window_attention.make_node(model, inputs, window=window, scale=SCALE, chunk=chunk,
                                      residual=residual, group=heads // kv_heads)
    model.graph.append(node)
    for i, out in enumerate(node.outputs):
        out.name, out.dtype, out.shape = f"y{i}", ir.DataType.FLOAT, ir.Shape(["B", heads, "N", dim])
        model.graph.outputs.append(out)
    return ort_session(model, threads=1), model


def qkv(rng, n, heads=2, kv_heads=None, dim=8, batch=1):
    kv_heads = kv_heads or heads
    return [rng.standard_normal((batch, h, n, dim), dtype=np.float32) for h in (heads, kv_heads, kv_heads)]


def run(sess, q, k, v):
    return sess.run(None, {"q": q, "k": k, "v": v})


@pytest.mark.parametrize("window", [0, 1, 5, 64, 200])
def test_ragged_lengths_match_explicit_mask(window):
    sess, _ = session(window)
    rng = np.random.default_rng(window)
    for n in (1, 7, 100, 257, 300):
        q, k, v = qkv(rng, n)
        (y,) = run(sess, q, k, v)
        np.testing.assert_allclose(y, reference(q, k, v, band(n, window)), atol=1e-5, err_msg=f"N={n}")


@pytest.mark.parametrize("window", [49, 1000])
def test_window_covering_sequence_is_full_attention(window):
    sess, _ = session(window)
    q, k, v = qkv(np.random.default_rng(1), 50)
    np.testing.assert_allclose(run(sess, q, k, v)[0], reference(q, k, v, True), atol=1e-5)


def test_residual_plus_window_is_full_attention():
    sess, _ = session(6, residual=True)
    rng = np.random.default_rng(2)
    for n in (1, 9, 70):
        q, k, v = qkv(rng, n, batch=2)
        y, r = run(sess, q, k, v)
        np.testing.assert_allclose(y, reference(q, k, v, band(n, 6)), atol=1e-5)
        np.testing.assert_allclose(y + r, reference(q, k, v, True), atol=1e-5)


@pytest.mark.parametrize("window,chunk", [(40, 16), (3, 1), (17, 64)])
def test_chunk_not_dividing_window(window, chunk):
    sess, _ = session(window, chunk=chunk)
    q, k, v = qkv(np.random.default_rng(3), 131)
    np.testing.assert_allclose(run(sess, q, k, v)[0], reference(q, k, v, band(131, window)), atol=1e-5)


def test_grouped_query_heads():
    sess, _ = session(4, heads=6, kv_heads=2)
    q, k, v = qkv(np.random.default_rng(4), 45, heads=6, kv_heads=2)
    np.testing.assert_allclose(run(sess, q, k, v)[0], reference(q, k, v, band(45, 4)), atol=1e-5)


def test_function_is_model_local_standard_ops_only():
    _, model = session(9, residual=True)
    proto = ir.to_proto(model)
    onnx.checker.check_model(proto)
    (func,) = proto.functions
    assert (func.domain, func.name, func.overload) == (GENZIP_DOMAIN, "WindowAttention", "w9_c32_res")
    assert {n.domain for n in func.node} == {""}
    assert {o.domain: o.version for o in proto.opset_import}[GENZIP_DOMAIN] == 1
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in proto.graph.node[0].attribute}
    assert attrs == {"window": 9, "chunk": 32, "scale": pytest.approx(SCALE)}


def test_choose_chunk():
    assert window_attention.choose_chunk(0) == 32
    assert window_attention.choose_chunk(256) == 128
    assert window_attention.choose_chunk(512) == 256
    assert window_attention.choose_chunk(100_000) == 256
    with pytest.raises(ValueError):
        window_attention.choose_chunk(-1)


def test_op_shapes_window():
    (y,) = op_shapes.window_attention((2, 8, "N", 64), (2, 8, "N", 64), (2, 8, None, 32),
                                      ("float32",) * 3, window=4, chunk=16)
    assert y == ((2, 8, "N", 32), "float32")
    outs = op_shapes.window_attention((1, 8, 10, 4), (1, 2, 10, 4), (1, 2, 10, 4), window=0, chunk=1, residual=True)
    assert outs == [((1, 8, 10, 4), None)] * 2
    for bad in [dict(k=(1, 8, 11, 4)), dict(k=(1, 3, 10, 4)), dict(k=(1, 8, 10)), dict(k=(1, 8, 10, 5))]:
        with pytest.raises(op_shapes.ShapeError):
            op_shapes.window_attention((1, 8, 10, 4), bad["k"], (1, 8, 10, 4), window=1, chunk=1)
    with pytest.raises(op_shapes.ShapeError, match="window"):
        op_shapes.window_attention(None, None, None, window=-1, chunk=1)
    with pytest.raises(op_shapes.ShapeError, match="dtype"):
        op_shapes.window_attention(None, None, None, ("float32", "float16", None), window=1, chunk=1)
    # Opaque dims (TensorRT ShapeExpr) pass through untouched.
    b, h, n, d = (object() for _ in range(4))
    assert op_shapes.window_attention_shapes([b, h, n, d], [b, h, n, d], [b, h, n, d], residual=True) == [
        (b, h, n, d), (b, h, n, d)]
    assert op_shapes.span_attention_shapes([b, h, n, d], [b, h, n, d], [b, h, n, d]) == [(b, h, n, d)]
