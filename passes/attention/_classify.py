"""What an ``Attention`` node is: self or cross, and which torch module it came from.

Self vs cross (structural, no names involved): walk back from Q and from K at
most ``MAX_HOPS`` producers, collecting every non-constant, non-scalar value on
the way. The attention is *self* when the two sets share a value (Q and K are
projections of one activation, or split from one fused QKV projection), and
*cross* otherwise. The walk follows only the data operand of shape-taking ops
(input 0 of Reshape, Expand, Slice, ...), and stops at shape computations and
at other ``Attention`` nodes, so a shared batch size or an earlier layer cannot
make a cross attention look like self attention.
"""

from __future__ import annotations

import ast
import math

import onnx_ir as ir

MAX_HOPS = 8

# Ops whose inputs after the first are shapes, indices or sizes, not data.
_DATA_INPUT_ONLY = frozenset({
    "Reshape", "Expand", "Slice", "Tile", "Pad", "Squeeze", "Unsqueeze", "Gather", "GatherElements",
    "GatherND", "Resize", "Split", "TopK", "CumSum", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin",
    "ReduceProd", "ReduceL2", "ScatterND", "ScatterElements", "OneHot", "Trilu",
})
# Ops whose outputs carry no per-element data dependence (or belong to another attention).
_STOP = frozenset({"Shape", "Size", "ConstantOfShape", "Range", "EyeLike", "Attention", "Constant"})

_SCOPES_KEY = "pkg.torch.onnx.name_scopes"
_NAMESPACE_KEY = "namespace"


def _is_constant(value: ir.Value) -> bool:
    if value.const_value is not None or value.is_initializer():
        return True
    producer = value.producer()
    return producer is not None and producer.op_type == "Constant" and producer.domain in ("", "ai.onnx")


def _is_scalar(value: ir.Value) -> bool:
    shape = value.shape
    return shape is not None and all(isinstance(d, int) for d in shape) and math.prod(shape) == 1


def _ancestors(value: ir.Value, max_hops: int) -> set[int]:
    seen: set[int] = set()
    frontier = [value]
    for _ in range(max_hops + 1):
        next_frontier = []
        for v in frontier:
            if id(v) in seen or _is_constant(v) or _is_scalar(v):
                continue
            seen.add(id(v))
            node = v.producer()
            if node is None or node.op_type in _STOP:
                continue
            inputs = node.inputs[:1] if node.op_type in _DATA_INPUT_ONLY else node.inputs
            next_frontier.extend(i for i in inputs if i is not None)
        frontier = next_frontier
    return seen


def attention_kind(node: ir.Node, max_hops: int = MAX_HOPS) -> str:
    """``"self"`` or ``"cross"`` for a 4D ``Attention`` node (rule in the module docstring)."""
    query, key = node.inputs[0], node.inputs[1]
    if query is key:
        return "self"
    return "self" if _ancestors(query, max_hops) & _ancestors(key, max_hops) else "cross"


def _own_scope(node: ir.Node) -> str | None:
    """The torch module path recorded on a node by the dynamo exporter, if any."""
    raw = node.metadata_props.get(_SCOPES_KEY)
    if raw:
        try:
            scopes = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            scopes = None
        # The last entry names the op itself; the one before is its enclosing module.
        if isinstance(scopes, list) and len(scopes) >= 2 and isinstance(scopes[-2], str) and scopes[-2]:
            return scopes[-2]
    raw = node.metadata_props.get(_NAMESPACE_KEY)
    if raw:
        # ": pkg.Root/blocks.0: pkg.Block/blocks.0.attn: pkg.Attn/sdpa: aten.sdpa" -> blocks.0.attn
        modules = [part.split(":", 1)[0].strip() for part in raw.split("/")[:-1]]
        modules = [m for m in modules if m]
        if modules:
            return modules[-1]
    return None


def _nearest_scope(value: ir.Value | None, max_hops: int) -> str | None:
    for _ in range(max_hops):
        node = value.producer() if value is not None else None
        if node is None:
            return None
        scope = _own_scope(node)
        if scope:
            return scope
        value = node.inputs[0] if node.inputs else None
    return None


def _common_prefix(paths: list[str]) -> str | None:
    parts = [p.split(".") for p in paths]
    common = []
    for items in zip(*parts):
        if len(set(items)) != 1:
            break
        common.append(items[0])
    return ".".join(common) or None


def attention_scope(node: ir.Node, max_hops: int = 4) -> str | None:
    """The module path of the node, else the common path of its Q/K/V producers."""
    scope = _own_scope(node)
    if scope:
        return scope
    found = [_nearest_scope(v, max_hops) for v in node.inputs[:3]]
    if any(s is None for s in found):
        return None
    return _common_prefix(found)
