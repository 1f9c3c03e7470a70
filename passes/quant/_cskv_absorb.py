"""CSKV attention without reconstructing K and V: the bases are absorbed into the query
and the output, so a decode step reads the rank-r features once instead of rebuilding a
``[total, D]`` cache from them.

For one attention whose K and V are both ``cskv`` caches (features ``F`` of every token,
``[b, kv_heads, total, r / kv_heads]``, basis ``Bᵀ = up`` ``[r, D]``, optionally a window of
the last ``W'`` tokens exact), with query head ``j`` reading KV head ``h = j // g``::

    K_h = F_flat · up[:, h]            (what the reconstruct form builds, [total, head_dim])
    q_j · K_hᵀ = (q_j · up[:, h]ᵀ) · F_flatᵀ          -> scores over the features, rank r
    P_j · V_h = (P_j · F_v_flat) · up_v[:, h]          -> rank r, then head_dim

The ``F_flatᵀ`` product is taken per feature block of each KV head and summed
(``ReduceSum`` over those blocks), so the cache is read in its stored layout and never
transposed or copied. With a window, the feature scores of the window's tokens are
masked out (they come exact from the window branch), the window's exact scores are
concatenated after them, and one softmax covers both.

Invariant: for an ``Attention`` node the rewrite accepts (plain ONNX ``Attention``, 4-D
inputs, no softcap, ``qk_matmul_output_mode`` 0, not ``is_causal``, a bool or float mask of
rank 4 or none, only the first output used), its output equals the reconstruct form's up
to float rounding; any other node is left to the reconstruct form and counted.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import onnx_ir as ir

from genzip.ir_build import NodeBuilder


@dataclasses.dataclass(frozen=True)
class LowRankCache:
    """What ``cskv`` built for one cache: ``features`` (float, ``[b, kv_heads, total,
    r / kv_heads]``), ``up`` (``[r, D]``, heads' channels concatenated), ``window`` (exact
    last tokens ``[b, kv_heads, W', head_dim]``) or None, and ``nodes``: the reconstruct
    form, removed when no longer read."""

    features: ir.Value
    up: np.ndarray
    window: ir.Value | None
    kv_heads: int
    head_dim: int
    nodes: tuple[ir.Node, ...]


def why_not(node: ir.Node) -> str | None:
    """None when ``node`` is an attention this rewrite handles, else the reason."""
    if node.op_type != "Attention" or node.domain not in ("", "ai.onnx"):
        return f"{node.op_type} is not ONNX Attention"
    attrs = node.attributes
    if attrs.get_float("softcap", 0.0) or attrs.get_int("qk_matmul_output_mode", 0) or attrs.get_int("is_causal", 0):
        return "softcap, qk_matmul_output_mode or is_causal is set"
    if len(node.inputs) > 4 or any(o.uses() or o.is_graph_output() for o in node.outputs[1:]):
        return "it has past inputs or reads extra outputs"
    q = node.inputs[0]
    if q.shape is None or len(q.shape) != 4 or not isinstance(q.shape[1], int):
        return "its query is not 4-D with static heads"
    mask = node.inputs[3] if len(node.inputs) > 3 else None
    if mask is not None and (mask.shape is None or len(mask.shape) != 4 or mask.shape[-1] == 1):
        return "its mask is not a rank-4 [.., seq, total] mask"
    return None


def _per_query_head(up: np.ndarray, kv_heads: int, q_heads: int, head_dim: int, transpose: bool) -> np.ndarray:
    """``[q_heads, head_dim, r]`` (``up[:, h]ᵀ`` for K) or ``[q_heads, r, head_dim]`` (V)."""
    group = q_heads // kv_heads
    blocks = [up[:, h * head_dim:(h + 1) * head_dim] for h in range(kv_heads)]
    return np.ascontiguousarray(np.stack([blocks[j // group].T if transpose else blocks[j // group]
                                          for j in range(q_heads)]), dtype=np.float32)


def rewrite(graph: ir.Graph, node: ir.Node, k: LowRankCache, v: LowRankCache) -> None:
    """Replace ``node`` (checked by ``why_not``) with the absorbed form; drop what became dead."""
    q, mask = node.inputs[0], node.inputs[3] if len(node.inputs) > 3 else None
    q_heads, kv, d = q.shape[1], k.kv_heads, k.head_dim
    rank_k, rank_v = k.up.shape[0], v.up.shape[0]
    scale = node.attributes.get_float("scale", 1.0 / math.sqrt(d))
    b = NodeBuilder(f"{node.name}.cskv_absorbed")
    w_k = b.const(_per_query_head(k.up, kv, q_heads, d, transpose=True), np.float32)
    w_v = b.const(_per_query_head(v.up, kv, q_heads, d, transpose=False), np.float32)
    q_scaled = b.op("Mul", q, b.const(scale, np.float32))
    # scores over the features: [b, Hq, S, r] -> per KV-head feature block -> summed
    qk = b.op("MatMul", q_scaled, w_k)
    blocks = b.op("Transpose", b.op("Reshape", qk, b.ints(0, -1, kv, rank_k // kv)), perm=[0, 2, 1, 3])
    per_block = b.op("MatMul", blocks, b.op("Transpose", k.features, perm=[0, 1, 3, 2]))
    scores = b.op("Reshape", b.op("ReduceSum", per_block, b.ints(1), keepdims=1), b.ints(0, q_heads, -1, 0))
    bias = None
    if mask is not None:
        bias = (b.op("Where", mask, b.const(0.0, np.float32), b.const(-np.inf, np.float32))
                if mask.dtype == ir.DataType.BOOL else mask)
    total = b.op("Shape", k.features, start=2, end=3)
    if k.window is not None:
        kept = b.op("Shape", k.window, start=2, end=3)
        old = b.op("Sub", total, kept)
        positions = b.op("Range", b.const(0), b.op("Squeeze", total), b.const(1))
        invalid = b.op("Where", b.op("Less", positions, old), b.const(0.0, np.float32),
                       b.const(-np.inf, np.float32))
        # the window's tokens: exact scores, GQA by folding the group into the query rows
        q_kv = b.op("Reshape", q_scaled, b.ints(0, kv, -1, d))
        exact = b.op("MatMul", q_kv, b.op("Transpose", k.window, perm=[0, 1, 3, 2]))
        exact = b.op("Reshape", exact, b.ints(0, q_heads, -1, 0))
        scores = b.op("Concat", b.op("Add", scores, invalid), exact, axis=-1)
        if bias is not None:
            tail = b.op("Slice", bias, old, b.const([np.iinfo(np.int64).max]), b.ints(-1))
            bias = b.op("Concat", bias, tail, axis=-1)
    if bias is not None:
        scores = b.op("Add", scores, bias)
    probs = b.op("Softmax", scores, axis=-1)
    p_feat = probs if v.window is None else b.op("Slice", probs, b.ints(0), total, b.ints(-1))
    # P · V over the features: [b, 1, Hq*S, T] x [b, kv, T, r/kv] -> [b, Hq, S, r] -> head_dim
    z = b.op("MatMul", b.op("Reshape", p_feat, b.ints(0, 1, -1, 0)), v.features)
    z = b.op("Reshape", b.op("Transpose", z, perm=[0, 2, 1, 3]), b.ints(0, q_heads, -1, rank_v))
    out = b.op("MatMul", z, w_v)
    if v.window is not None:
        p_win = b.op("Reshape", b.op("Slice", probs, total, b.const([np.iinfo(np.int64).max]), b.ints(-1)),
                     b.ints(0, kv, -1, 0))
        exact_v = b.op("Reshape", b.op("MatMul", p_win, v.window), b.ints(0, q_heads, -1, d))
        out = b.op("Add", out, exact_v)
    graph.insert_before(node, b.nodes)
    result = node.outputs[0]
    out.shape, out.dtype = result.shape, result.dtype
    if result.is_graph_output():
        graph.outputs[list(graph.outputs).index(result)] = out
        out.name, result.name = result.name, None
    result.replace_all_uses_with(out)
    graph.remove(node, safe=True)
    for cache in (k, v):
        for dead in reversed(cache.nodes):
            if dead.graph is graph and not any(o.uses() or o.is_graph_output() for o in dead.outputs):
                graph.remove(dead, safe=True)
