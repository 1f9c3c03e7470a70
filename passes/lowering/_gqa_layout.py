"""What ``ort-gqa`` matches and what it leaves: the cached attention of a ``--kv-cache``
graph, and the checker of the ``kv-shared-buffer`` fact.

The canonical cached attention (``frontend/hf_kv_cache.py``) of layer ``i`` is::

    present.i.key   = Concat(past_key_values.i.key,   k_new, axis=2)     [b, kv, T, d]
    present.i.value = Concat(past_key_values.i.value, v_new, axis=2)
    out             = Attention(q [b, H, s, d], present.i.key, present.i.value, mask)

with nothing else reading the two Concats. After ``ort-gqa`` every ``present.*`` output
is an output of one ``com.microsoft.GroupQueryAttention`` whose ``past_key`` /
``past_value`` inputs are the matching ``past_key_values.*`` graph inputs.
"""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

PAST_PREFIX, PRESENT_PREFIX = "past_key_values.", "present."
GQA_OP, GQA_DOMAIN = "GroupQueryAttention", "com.microsoft"
_FLOATS = (ir.DataType.FLOAT, ir.DataType.FLOAT16)


@dataclasses.dataclass
class CachedAttention:
    """One layer's cached attention: the ``Attention`` node and its two cache Concats."""

    attention: ir.Node
    key_concat: ir.Node
    value_concat: ir.Node
    key_out: ir.Value  # graph output present.i.key
    value_out: ir.Value


def _cache_concat(value: ir.Value, graph_inputs: set[int]) -> ir.Node | None:
    """The ``Concat(past_key_values.*, new)`` producing graph output ``value``, or None."""
    node = value.producer()
    if node is None or node.op_type != "Concat" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
        return None
    past = node.inputs[0]
    if id(past) not in graph_inputs or not (past.name or "").startswith(PAST_PREFIX):
        return None
    return node


def _only_reader(value: ir.Value, graph_outputs: set[int]) -> ir.Node | None:
    """The single node reading ``value`` (besides it being a graph output), or None."""
    readers = {id(u.node): u.node for u in value.uses()}
    return next(iter(readers.values())) if len(readers) == 1 and id(value) in graph_outputs else None


def find_cached_attention(graph: ir.Graph) -> tuple[list[CachedAttention], list[str]]:
    """(every layer in the canonical cached form, why each other ``present.*`` pair is not)."""
    inputs, outputs = {id(v) for v in graph.inputs}, {id(v) for v in graph.outputs}
    by_name = {v.name: v for v in graph.outputs}
    found, problems = [], []
    for key_out in graph.outputs:
        name = key_out.name or ""
        if not (name.startswith(PRESENT_PREFIX) and name.endswith(".key")):
            continue
        value_out = by_name.get(name[: -len(".key")] + ".value")
        kc = _cache_concat(key_out, inputs)
        vc = _cache_concat(value_out, inputs) if value_out is not None else None
        if kc is None or vc is None:
            problems.append(f"{name} is not Concat(past_key_values.*, new)")
            continue
        attn = _only_reader(key_out, outputs)
        if attn is None or attn is not _only_reader(value_out, outputs) or attn.op_type != "Attention" \
                or attn.domain not in ("", "ai.onnx"):
            problems.append(f"{name} is read by something other than one ONNX Attention")
            continue
        if len(attn.inputs) < 3 or attn.inputs[1] is not key_out or attn.inputs[2] is not value_out:
            problems.append(f"the Attention reading {name} does not take it as K and the value cache as V")
            continue
        found.append(CachedAttention(attn, kc, vc, key_out, value_out))
    return found, problems


def kv_shared_problem(model: ir.Model) -> str | None:
    """Every ``present.*`` output comes from a GroupQueryAttention that reads the matching
    ``past_key_values.*`` input as its past (so one buffer can be bound to both)."""
    graph = model.graph
    inputs = {v.name: v for v in graph.inputs}
    present = [v for v in graph.outputs if (v.name or "").startswith(PRESENT_PREFIX)]
    if not present:
        return "the graph has no present.* cache outputs"
    for value in present:
        node = value.producer()
        if node is None or node.op_type != GQA_OP or node.domain != GQA_DOMAIN:
            return f"'{value.name}' is not an output of {GQA_DOMAIN}.{GQA_OP}"
        index = list(node.outputs).index(value)  # 1: present_key, 2: present_value
        past = inputs.get(PAST_PREFIX + value.name[len(PRESENT_PREFIX):])
        if index not in (1, 2) or past is None or len(node.inputs) <= index + 2 or node.inputs[index + 2] is not past:
            return f"'{value.name}' does not update the cache input its GroupQueryAttention reads as past"
        if past.dtype not in _FLOATS:
            return f"cache input '{past.name}' is {past.dtype}, not float32/float16"
    return None
