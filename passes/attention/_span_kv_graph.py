"""``span-attn`` on ``--kv-cache`` graphs: the driver over every layer.

Each layer is rewritten per layer (``_span_kv.rewrite_layer``) or per KV head
(``_span_kv_heads.rewrite``); then dead nodes go, nothing may still read a past
input's length (``_span_kv.check_past_readers``), the unsplit past inputs a per-head
split replaced leave the graph, kv-quant's scale names follow the split, and the
capacities are written to the metadata (``KV_CAPACITY_KEY``).
"""

from __future__ import annotations

import json

import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from genzip.errors import GenzipError
from genzip.ir_build import NodeBuilder
from genzip.metadata import KV_CAPACITY_KEY, KV_QUANT_KEY
from genzip.passes.attention import _span_kv, _span_kv_heads


def rewrite_kv_graph(model: ir.Model, sites: list[_span_kv.KVSite], rules: list[list[tuple[float, float]]], sinks: int,
                     seq: int, per_head: bool) -> dict[str, int]:
    """Rewrite every site (``per_head``: split per KV head, ``_span_kv_heads``, the layers
    whose KV heads' capacities differ); returns ``{past input name: capacity}`` (also
    written to the metadata)."""
    graph = model.graph
    b = NodeBuilder("span_kv")
    shared = _span_kv.Shared(graph, b)
    first = min(list(graph).index(s.node) for s in sites)
    graph.insert_before(list(graph)[first], b.nodes)
    b.nodes.clear()
    capacities: dict[str, int] = {}
    split: list[ir.Value] = []
    for layer, (site, rule) in enumerate(zip(sites, rules)):
        if len(site.node.inputs) < 4 or site.node.inputs[3] is None:
            raise GenzipError(f"span-attn: KV-cache attention {site.node.name} has no mask input to replace",
                              "compile the model with genzip-compile FOLDER --kv-cache")
        builder = NodeBuilder(f"span_kv{layer}")
        if per_head and len(set(_span_kv_heads.head_capacities(site, rule, sinks, seq))) > 1:
            capacities.update(_span_kv_heads.rewrite(graph, site, rule, sinks, seq, shared, builder, layer))
            split += [c.inputs[0] for c in site.caches]
        else:
            capacities.update(_span_kv.rewrite_layer(graph, site, rule, sinks, _span_kv.capacity(rule, sinks, seq), shared,
                                                        builder))
    RemoveUnusedNodesPass()(model)
    _span_kv.check_past_readers(graph)
    by_name = {v.name: v for v in graph.inputs}
    for past in split:  # replaced by its per-head inputs
        for user, _ in list(past.uses()):
            if user.op_type == "Shape" and _reads_only_batch_or_dim(user):  # the same in head 0's tensor
                user.replace_input_with(0, by_name[_span_kv.head_name(past.name, 0)])
        readers = [user for user, _ in past.uses()]
        if readers:
            raise GenzipError(f"span-attn: '{past.name}' is read by {readers[0].op_type} '{readers[0].name}', "
                              "which would need the whole (unsplit) cache", "give span-attn evict=layer")
        graph.inputs.remove(past)
    _rename_quant_scales(model, split)
    model.metadata_props[KV_CAPACITY_KEY] = json.dumps(capacities, sort_keys=True)
    return capacities


def _rename_quant_scales(model: ir.Model, split: list[ir.Value]) -> None:
    """kv-quant's layout names each int8 past's scale input: after a per-head split, per head."""
    raw = model.metadata_props.get(KV_QUANT_KEY)
    if not raw or not split:
        return
    spec = json.loads(raw)
    names = {v.name: _span_kv.heads_of(v) for v in split}
    scales = {}
    for past, scale in spec["scales"].items():
        if past in names:
            scales.update({_span_kv.head_name(past, g): _span_kv.head_name(scale, g) for g in range(names[past])})
        else:
            scales[past] = scale
    spec["scales"] = scales
    model.metadata_props[KV_QUANT_KEY] = json.dumps(spec, sort_keys=True)


def _reads_only_batch_or_dim(shape: ir.Node) -> bool:
    """Whether a ``Shape`` of a rank-4 past reads neither the heads (1) nor the tokens (2)."""
    start = shape.attributes.get_int("start", 0) % 4
    end = shape.attributes.get_int("end", 4)
    end = end % 4 if end < 0 else min(end, 4)
    return end <= 1 or start >= 3
