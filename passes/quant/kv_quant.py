"""``kv-quant``: an int8 KV cache (KV8), one scale per head and token.

Works on ``genzip-compile FOLDER --kv-cache`` graphs, where each layer writes
``present.{i}.{key|value} = Concat(past_key_values.{i}.{key|value}, new, axis=2)``
and attention reads that Concat. Per such pair the pass makes the cache int8::

    s_new  = max(ReduceMax(|new|, head_dim) / 127, MIN_SCALE)          [b, h, seq, 1]
    q_new  = Cast<int8>(Clip(Round(new / s_new), -127, 127))
    present       = Concat(past (int8), q_new)           -> output present.{i}.{kv}
    present_scale = Concat(past_scale, s_new)            -> output present.{i}.{kv}_scale
    attention reads Mul(Cast<float>(present), present_scale)

so everything attention sees, the new tokens included, is the dequantized cache:
prefill and decode see identical K/V, and the runtime stores 1 byte per element
plus 4 bytes per head and token instead of 4 bytes per element (head_dim 48:
3.7x less). Layout and NumPy twin: :mod:`genzip.passes.quant._kv_layout`. The
runtime binds the dtypes the graph declares (:mod:`genzip.runtime._kv_cache`).

Invariant (fact ``kv-int8``): every selected layer's ``past_key_values.*`` cache input
is int8 with a float32 ``*_scale`` input, and so is its ``present.*`` output; the
other layers stay float32. A graph with no
``Concat(past, new)`` cache update is left unchanged (``modified=False``, a warning
says why); a cache input already int8 is an error naming it.
"""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import onnx_ir as ir

from genzip.errors import GenzipError
from genzip.ir_build import NodeBuilder
from genzip.metadata import KV_CAPACITY_KEY, KV_QUANT_KEY
from genzip.passes.infra.context import PassContext
from genzip.passes.infra.contract import GenzipPass, GenzipPassResult
from genzip.passes.quant._kv_layout import MIN_SCALE, QMAX, SCALE_SUFFIX

logger = logging.getLogger(__name__)

PAST_PREFIX, PRESENT_PREFIX = "past_key_values.", "present."


@dataclasses.dataclass(frozen=True, kw_only=True)
class Options:
    """``layers``: comma-separated layer indices to quantize (default all)."""

    layers: str | None = None

    def __post_init__(self):
        if self.layers is not None:
            parts = [p.strip() for p in self.layers.split(",")]
            if not parts or not all(p.isdigit() for p in parts):
                raise ValueError(f"layers={self.layers!r} must be comma-separated layer indices, e.g. layers=0,1")

    def selected(self, layer: int) -> bool:
        return self.layers is None or str(layer) in {p.strip() for p in self.layers.split(",")}


def _layer(name: str) -> int | None:
    parts = name.split(".")
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None


def cache_updates(graph: ir.Graph) -> list[tuple[ir.Value, ir.Node]]:
    """(present output, its Concat(past input, new)) for every cache update of the graph."""
    inputs = {id(v) for v in graph.inputs}
    found = []
    for out in graph.outputs:
        node = out.producer()
        if (out.name or "").startswith(PRESENT_PREFIX) and node is not None and node.op_type == "Concat" \
                and len(node.inputs) == 2 and id(node.inputs[0]) in inputs \
                and (node.inputs[0].name or "").startswith(PAST_PREFIX):
            found.append((out, node))
    return found


def _rewrite(graph: ir.Graph, out: ir.Value, concat: ir.Node) -> tuple[str, str]:
    past, new = concat.inputs
    if past.dtype != ir.DataType.FLOAT:
        raise GenzipError(f"cache input '{past.name}' is {past.dtype}, not float32 (kv-quant ran twice?)",
                          "run kv-quant once, on a float32 --kv-cache graph")
    axis = concat.attributes["axis"].as_int()
    b = NodeBuilder(f"{out.name}.kv8")
    amax = b.op("ReduceMax", b.op("Abs", new), b.ints(-1), keepdims=1)
    scale = b.op("Max", b.op("Div", amax, b.const(QMAX, np.float32)), b.const(MIN_SCALE, np.float32))
    rounded = b.op("Round", b.op("Div", new, scale))
    q_new = b.op("Cast", b.op("Clip", rounded, b.const(-QMAX, np.float32), b.const(QMAX, np.float32)),
                 to=ir.DataType.INT8)
    scale_in = ir.Value(name=past.name + SCALE_SUFFIX, type=ir.TensorType(ir.DataType.FLOAT),
                        shape=ir.Shape([*past.shape[:-1], 1]) if past.shape is not None else None)
    present_q = b.op("Concat", past, q_new, axis=axis)
    present_s = b.op("Concat", scale_in, scale, axis=axis)
    deq = b.op("Mul", b.op("Cast", present_q, to=ir.DataType.FLOAT), present_s)
    graph.insert_after(concat, b.nodes)
    past.dtype = ir.DataType.INT8
    graph.inputs.insert(list(graph.inputs).index(past) + 1, scale_in)
    # Attention (and anything else) reads the dequantized cache; the outputs become int8 + scales.
    out_name, shape = out.name, out.shape
    position = list(graph.outputs).index(out)
    graph.outputs[position] = present_q
    graph.outputs.insert(position + 1, present_s)
    out.replace_all_uses_with(deq)
    graph.remove(concat, safe=True)
    present_q.name, present_q.shape = out_name, shape
    present_s.name = out_name + SCALE_SUFFIX
    present_s.shape = ir.Shape([*shape[:-1], 1]) if shape is not None else None
    present_s.dtype = ir.DataType.FLOAT
    present_q.dtype = ir.DataType.INT8
    return past.name, scale_in.name


class KVQuantPass(GenzipPass):
    name = "kv-quant"
    summary = "int8 KV cache (KV8) on --kv-cache graphs: int8 past/present with one scale per head and token"
    Options = Options
    ensures_facts = frozenset({"kv-int8"})
    conflicts_facts = {"kv-lowrank": "cskv before it made the cache low-rank features; use cskv{int8=true} "
                                     "for int8 features"}

    def run(self, model: ir.Model, context: PassContext) -> GenzipPassResult:
        opts: Options = self.options
        graph = model.graph
        if KV_CAPACITY_KEY in model.metadata_props:
            raise GenzipError("kv-quant: span-attn already rewrote the cache (evicting, Gather after Concat)",
                              "run kv-quant before span-attn: kv-quant,span-attn{...} (MoA + KV8)")
        updates = [(o, c) for o, c in cache_updates(graph) if opts.selected(_layer(o.name) or 0)]
        if not updates:
            # Its fact (an int8 cache) cannot hold on a graph without a cache: a user error,
            # even under allow-noop.
            raise GenzipError("kv-quant: no cache update Concat(past_key_values.*, new) -> present.* in the graph",
                              "compile an LLM with --kv-cache (a transformers folder or preset)")
        scales = dict(_rewrite(graph, out, concat) for out, concat in updates)
        previous = json.loads(model.metadata_props.get(KV_QUANT_KEY, "{}")).get("scales", {})
        model.metadata_props[KV_QUANT_KEY] = json.dumps(
            {"dtype": "int8", "granularity": "per-head-token", "scales": {**previous, **scales}}, sort_keys=True)
        head_dim = updates[0][0].shape[-1] if updates[0][0].shape is not None else None
        stats = {"quantized": len(scales), "dtype": "int8", "granularity": "per-head-token"}
        if isinstance(head_dim, int):
            stats["bytes_ratio"] = round(4 * head_dim / (head_dim + 4), 3)  # fp32 row vs int8 row + scale
        return GenzipPassResult(model, True, stats)
