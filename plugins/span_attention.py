"""``genzip.SpanAttention`` (domain ``genzip``, version 1): MoA per-head causal spans.

Schema::

    Y = genzip.SpanAttention(Q, K, V) {spans: ints (one per query head), sinks: int, scale: float}
    Q: [B, Hq, N, D]   K: [B, Hkv, N, D]   V: [B, Hkv, N, Dv]   Y: [B, Hq, N, Dv]
    Hq == len(spans), Hq % Hkv == 0; query head h uses KV head h // (Hq / Hkv).

Query ``i`` of head ``h`` attends to key ``j`` iff ``j <= i`` and
(``j < sinks`` or ``i - j < spans[h]``). Spans must be >= 1 (a query always sees
itself).

Invariant: the model-local function body for one ``(spans, sinks, Hkv)`` is made
of standard ONNX ops only, keeps N dynamic, and costs O(N·span) per head. Heads
are grouped by span (equal spans computed together by one banded body, see
``banded_attention``), and within a span by how many of a KV head's query heads
share it, so each group uses Attention's own GQA broadcast and K/V are never
copied per query head. Group outputs are concatenated in group order and the
head permutation is undone with one Gather. The ``overload`` encodes sinks, Hkv
and a digest of the spans; ``scale`` is an attribute reference.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import onnx_ir as ir

from genzip.plugins.banded_attention import banded_attention, choose_chunk
from genzip.plugins.onnx_fn import GENZIP_DOMAIN, MIN_ONNX_OPSET, FnBuilder, attr_params, install_function

OP_TYPE = "SpanAttention"


def head_groups(spans: Sequence[int], kv_heads: int) -> list[tuple[int, list[int], list[int]]]:
    """Split query heads into ``(span, query_heads, kv_heads)`` groups.

    Within a group every listed KV head has the same number ``m`` of query heads,
    listed KV-head-major, so query head ``query_heads[x]`` uses ``kv_heads[x // m]``.
    """
    hq = len(spans)
    if kv_heads < 1 or hq % kv_heads:
        raise ValueError(f"{hq} query heads cannot be grouped over {kv_heads} KV heads")
    per_kv = hq // kv_heads
    groups = []
    for span in sorted(set(spans)):
        by_kv: dict[int, list[int]] = {}
        for h in range(hq):
            if spans[h] == span:
                by_kv.setdefault(h // per_kv, []).append(h)
        for m in sorted({len(hs) for hs in by_kv.values()}):
            kvs = [kv for kv in sorted(by_kv) if len(by_kv[kv]) == m]
            groups.append((span, [h for kv in kvs for h in by_kv[kv]], kvs))
    return groups


def overload_name(spans: Sequence[int], sinks: int, kv_heads: int) -> str:
    digest = hashlib.sha1(",".join(map(str, spans)).encode()).hexdigest()[:10]
    return f"s{sinks}_kv{kv_heads}_{digest}"


def _select(fb: FnBuilder, x: ir.Value, heads: list[int], total: int) -> ir.Value:
    if heads == list(range(total)):
        return x  # the whole tensor in order: no copy
    return fb.op("Gather", x, fb.ints(*heads), axis=1)


def build_function(spans: Sequence[int], sinks: int, kv_heads: int, onnx_opset: int) -> ir.Function:
    """The function body of one ``(spans, sinks, kv_heads)`` configuration."""
    spans = [int(s) for s in spans]
    if not spans or min(spans) < 1 or sinks < 0:
        raise ValueError(f"spans must be >= 1 and sinks >= 0, got spans={spans} sinks={sinks}")
    overload = overload_name(spans, sinks, kv_heads)
    fb = FnBuilder(f"sa_{overload}")
    q, k, v = (ir.Value(name=name) for name in ("q", "k", "v"))
    scale = ir.Attr("scale", ir.AttributeType.FLOAT, None, ref_attr_name="scale")
    hq = len(spans)
    outs, order = [], []
    for span, q_heads, kvs in head_groups(spans, kv_heads):
        y = banded_attention(
            fb, _select(fb, q, q_heads, hq), _select(fb, k, kvs, kv_heads), _select(fb, v, kvs, kv_heads),
            scale, chunk=choose_chunk(span - 1), left=span - 1, right=0, sinks=sinks,
            group=len(q_heads) // len(kvs),
        )
        outs.append(y)
        order.extend(q_heads)
    y = outs[0] if len(outs) == 1 else fb.op("Concat", *outs, axis=1)
    if order != list(range(hq)):
        inverse = [order.index(h) for h in range(hq)]
        y = fb.op("Gather", y, fb.ints(*inverse), axis=1)
    attrs = attr_params(spans=ir.AttributeType.INTS, sinks=ir.AttributeType.INT, scale=ir.AttributeType.FLOAT)
    return fb.function(OP_TYPE, overload, [q, k, v], [y], onnx_opset, attrs,
                       doc=f"causal span attention, sinks={sinks}, spans={spans}")


def make_node(
    model: ir.Model,
    inputs: Sequence[ir.Value],
    *,
    spans: Sequence[int],
    sinks: int,
    scale: float,
    kv_heads: int | None = None,
    name: str | None = None,
) -> ir.Node:
    """Create (not insert) a SpanAttention node and install its function in ``model``.

    ``kv_heads`` defaults to ``len(spans)`` (no grouped-query attention).
    """
    spans = [int(s) for s in spans]
    kv_heads = kv_heads if kv_heads is not None else len(spans)
    onnx_opset = model.opset_imports.get("", 0)
    if onnx_opset < MIN_ONNX_OPSET:
        raise ValueError(f"SpanAttention needs default opset >= {MIN_ONNX_OPSET}, model has {onnx_opset}")
    function = install_function(model, build_function(spans, sinks, kv_heads, onnx_opset))
    attrs = {"spans": spans, "sinks": int(sinks), "scale": float(scale)}
    return ir.Node(GENZIP_DOMAIN, OP_TYPE, list(inputs), ir.convenience.convert_attributes(attrs),
                   overload=function.overload, num_outputs=1, name=name)
