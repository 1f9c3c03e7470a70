"""``span-attn`` on ``--kv-cache`` graphs, ``evict=head``: every KV head gets its own cache.

Layout: per layer and KV head ``g`` each cache tensor ``past_key_values.{i}.{kv}``
``[b, Hkv, P, d]`` becomes its own graph input ``past_key_values.{i}.h{g}.{kv}``
``[b, 1, P_g, d]`` (and ``present.{i}.h{g}.{kv}``), with ``P_g <= C_g = sinks + the widest
span, over N <= seq, of the query heads that share KV head g`` (GQA: query heads ``g·G ..
g·G + G - 1``). The layer's ``Attention`` becomes ``Hkv`` attentions, one per KV head:
``Attention(Q[:, gG:(g+1)G], K_g, V_g, mask_g)`` with ``K_g = Concat(past_g, k_new[:, g])``
evicted as in ``_span_kv`` with ``C_g``; their outputs are concatenated on the head axis.

Why separate tensors rather than one ragged buffer per layer with per-head offsets: ONNX
has no ragged tensor, so a flat buffer would be sliced and reshaped per head inside the
graph anyway, and ``Concat(past, new)`` must write a new buffer (ORT cannot alias an
output to an input, see ``genzip.runtime._kv_cache``), so the flat form saves no copy. With
one tensor per head each step copies exactly what the per-layer form copies, head by head
(``Concat`` reads ``P_g`` rows, ``Gather`` writes ``min(P_g + S, C_g)``), and no more:
nothing pads the heads to a common length. The runtime already binds each past/present
pair by its own shape (``Slot.heads`` reads the 1 here, ``Slot.keep`` the ``C_g``).

kv-quant's int8 cache (``Mul(Cast(int8 rows), scales)`` between Concat and Attention)
is split the same way: its int8 rows and scales each get per-head tensors and the
dequantization nodes are repeated per head (``KVSite.chain``).

A layer whose KV heads all get the same capacity is not split (``_span_kv_graph``): its
per-head tensors would hold exactly the per-layer tensor's tokens, and the split costs
``Hkv`` attentions and masks per step instead of one (8-15% slower decode with a
uniform rule, measured: README, Decode benchmark).

Invariant: the result equals span attention over a dense cache for ``N <= seq``, and
equals ``evict=layer``'s (the same tokens a head's spans reach are kept either way; a
head's attention never reads another KV head's keys).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from genzip.ir_build import NodeBuilder
from genzip.passes.attention._span_kv import (
    PAST_PREFIX,
    KVSite,
    Shared,
    axis_len,
    capacity,
    evict_index,
    head_name,
    span_mask,
)


def _copy_attrs(node: ir.Node) -> list[ir.Attr]:
    return [ir.Attr(a.name, a.type, a.value) for a in node.attributes.values()]


def _head_input(past: ir.Value, g: int, layer: int) -> ir.Value:
    shape = past.shape
    dims = [shape[0], 1, f"past_kept_{layer}_{g}", shape[3]] if shape is not None else None
    return ir.Value(name=head_name(past.name, g), type=ir.TensorType(past.dtype),
                    shape=ir.Shape(dims) if dims else None)


def head_capacities(site: KVSite, rule: list[tuple[float, float]], sinks: int, seq: int) -> list[int]:
    """Per KV head g: sinks + the widest span (N <= seq) of query heads g·G .. g·G + G - 1."""
    hq, hkv = site.node.inputs[0].shape[1], site.caches[0].inputs[0].shape[1]  # static: _span_kv.static_gqa
    group = hq // hkv
    return [capacity(rule[g * group:(g + 1) * group], sinks, seq) for g in range(hkv)]


def rewrite(graph: ir.Graph, site: KVSite, rule: list[tuple[float, float]], sinks: int, seq: int,
            shared: Shared, b: NodeBuilder, layer: int) -> dict[str, int]:
    """Split ``site`` per KV head; returns ``{per-head past input: capacity}``."""
    node = site.node
    q = node.inputs[0]
    caps = head_capacities(site, rule, sinks, seq)
    group = q.shape[1] // len(caps)
    s = axis_len(b, q, 2)
    heads, presents, inputs, capacities = [], {id(c): [] for c in site.caches}, {id(c): [] for c in site.caches}, {}
    for g, cap in enumerate(caps):
        rows = rule[g * group:(g + 1) * group]
        mapped: dict[int, ir.Value] = {}
        for concat in site.caches:
            past, new = concat.inputs
            past_g = _head_input(past, g, layer)
            inputs[id(concat)].append(past_g)
            capacities[past_g.name] = cap
            new_g = b.op("Slice", new, b.ints(g), b.ints(g + 1), b.ints(1))
            mapped[id(concat.outputs[0])] = b.op("Concat", past_g, new_g, axis=2)
        for c in site.chain:  # kv-quant's dequantization, per head
            clone = ir.Node(c.domain, c.op_type, [mapped.get(id(v), v) for v in c.inputs],
                            attributes=_copy_attrs(c), name=f"{b.prefix}_h{g}_{c.op_type}_{len(b.nodes)}")
            b.append(clone)
            mapped[id(c.outputs[0])] = clone.outputs[0]
        first = site.caches[0]
        mask, length = span_mask(b, shared, s, axis_len(b, inputs[id(first)][g], 2), rows, sinks)
        q_g = b.op("Slice", q, b.ints(g * group), b.ints((g + 1) * group), b.ints(1))
        attention = ir.Node(node.domain, node.op_type,
                            [q_g, mapped[id(node.inputs[1])], mapped[id(node.inputs[2])], mask],
                            attributes=_copy_attrs(node), name=f"{node.name}_h{g}")
        # Still the canonical form of the layer's attention (kind, index, scope): later passes match it.
        attention.metadata_props.update(node.metadata_props)
        b.append(attention)
        heads.append(attention.outputs[0])
        idx = evict_index(b, shared, length, cap, sinks)
        for concat in site.caches:
            presents[id(concat)].append(b.op("Gather", mapped[id(concat.outputs[0])], idx, axis=2))
    out = b.op("Concat", *heads, axis=1)
    graph.insert_before(node, b.nodes)
    b.nodes.clear()
    old = node.outputs[0]
    out.name, out.dtype, out.shape = f"{old.name}.heads", old.dtype, old.shape
    old.replace_all_uses_with(out)
    for concat in site.caches:
        _swap(graph.inputs, concat.inputs[0], inputs[id(concat)], None)
        _swap(graph.outputs, concat.outputs[0], presents[id(concat)], concat.outputs[0])
    return capacities


def _swap(values, old: ir.Value, new: list[ir.Value], present: ir.Value | None) -> None:
    """Put ``new`` (per head) where ``old`` is in graph inputs/outputs; outputs (``present``)
    take ``old``'s name per head and dtype. An old input stays listed until nothing reads it."""
    at = list(values).index(old)
    if present is not None:
        values.pop(at)
        shape = present.shape
        for g, value in enumerate(new):
            value.name, value.dtype = head_name(present.name, g), present.dtype
            value.shape = ir.Shape([shape[0], 1, "kv_kept", shape[3]]) if shape is not None else None
        present.name = f"{present.name}.full"
    for offset, value in enumerate(new):
        values.insert(at + (0 if present is not None else 1) + offset, value)


def split_head_feeds(model: ir.Model, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``feeds`` for the unsplit cache (``past_key_values.{i}.{kv}`` ``[b, Hkv, P, d]``) turned
    into feeds for ``model``'s per-head inputs (``[b, 1, P, d]`` each; unchanged when the model
    has none). P may exceed a head's capacity: the graph evicts on the first step."""
    names = {v.name for v in model.graph.inputs}
    out = dict(feeds)
    for name in names - feeds.keys():
        parts = name.split(".")
        if not (name.startswith(PAST_PREFIX) and len(parts) >= 4 and parts[2][:1] == "h" and parts[2][1:].isdigit()):
            continue
        base = ".".join(parts[:2] + parts[3:])
        if base in feeds and base not in names:
            g = int(parts[2][1:])
            out[name] = np.ascontiguousarray(feeds[base][:, g:g + 1])
    for name in feeds.keys() - names:
        if name.startswith(PAST_PREFIX) and name in out:
            del out[name]
    return out
