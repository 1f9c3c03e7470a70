"""What an ``Attention`` node is: self, cross or unknown, and which torch module it came from.

Self vs cross is decided by the data flow of the block, with no hop limit. Walking
back from a value along its data operands, the walk stops at

* graph inputs (and values of an outer scope): each is a *source*;
* other attentions (``Attention`` and its relatives, or the ``MatMul`` that reads a
  ``Softmax``: an attention not yet canonical): each is a *source*, the previous
  attention of the stream, so a residual stream does not carry an encoder's or an
  earlier layer's inputs past it;
* constants, shape computations (``Shape``, ``Range``, ...) and the shape, index and
  axis operands of shape-taking ops (input 1.. of ``Reshape``, ``Expand``, ``Slice``
  ...): they carry no per-element data and add nothing.

Structurally, the attention is *self* when K and V together read exactly the sources
Q reads (they are projections of Q's activation within the current layer: the
normalized hidden state, a fused QKV split, or a joint image+text sequence), *cross*
when they differ (K/V read another graph input such as encoder hidden states or
text embeddings, an encoder's output behind its attentions, or lack Q's stream), and
*unknown* when K/V read no source at all (constants only).

The torch module scope the exporter recorded (``attn1``/``self_attn``/``SelfAttention``
vs ``attn2``/``cross_attn``/``encoder_attn``/``EncDecAttention``; TorchScript's
``/model/layers.0/self_attn/MatMul`` node names when there is no metadata) is
corroborating evidence: when it contradicts the structure, the node is *unknown* and
the reason is recorded. Nothing is guessed.
"""

from __future__ import annotations

import dataclasses
import math
import re

import onnx_ir as ir

from genzip.passes.infra.module_paths import enclosing_module, module_classes

SELF, CROSS, UNKNOWN = "self", "cross", "unknown"
KINDS = (SELF, CROSS, UNKNOWN)
# Written only on unknown nodes: why the classification was refused.

# Ops whose inputs after the first are shapes, indices, sizes or axes, not data.
_DATA_INPUT_ONLY = frozenset({
    "Reshape", "Expand", "Slice", "Tile", "Pad", "Squeeze", "Unsqueeze", "Resize", "Split", "TopK", "CumSum",
    "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
    "ReduceLogSumExp", "ReduceSumSquare", "Trilu", "OneHot", "ArgMax", "ArgMin",
})
# Ops whose outputs carry no per-element data dependence.
_NO_DATA = frozenset({"Shape", "Size", "ConstantOfShape", "Range", "EyeLike", "Constant", "RandomNormalLike",
                      "RandomUniformLike"})
# Attention ops of any domain (ONNX, com.microsoft, genzip's replacements).
_ATTENTION_OPS = frozenset({"Attention", "MultiHeadAttention", "GroupQueryAttention", "SpanAttention",
                            "WindowAttention", "PackedAttention", "SparseAttention"})

# Module-name evidence, matched against the last component of the attention's scope.
_SELF_NAMES = frozenset({"attn1", "self_attn", "selfattention", "self_attention", "attn_self"})
_CROSS_NAMES = frozenset({"attn2", "cross_attn", "crossattention", "cross_attention", "encoder_attn",
                          "encdecattention", "enc_dec_attn", "src_attn"})


def _is_constant(value: ir.Value) -> bool:
    if value.const_value is not None or value.is_initializer():
        return True
    producer = value.producer()
    return producer is not None and producer.op_type == "Constant" and producer.domain in ("", "ai.onnx")


def _is_scalar(value: ir.Value) -> bool:
    shape = value.shape
    return shape is not None and all(isinstance(d, int) for d in shape) and math.prod(shape) == 1


def _is_attention(node: ir.Node) -> bool:
    if node.op_type in _ATTENTION_OPS:
        return True
    # A decomposed attention not (yet) canonical: MatMul(Softmax(...), V).
    return node.op_type == "MatMul" and any(
        v is not None and v.producer() is not None and v.producer().op_type == "Softmax" for v in node.inputs
    )


def _captured(node: ir.Node) -> list[ir.Value]:
    """Outer-scope values the subgraphs of an ``If``/``Loop``/``Scan`` node read."""
    graphs = []
    for attr in node.attributes.values():
        if attr.type == ir.AttributeType.GRAPH:
            graphs.append(attr.value)
        elif attr.type == ir.AttributeType.GRAPHS:
            graphs.extend(attr.value)
    if not graphs:
        return []
    inner, nodes = set(), []
    for graph in graphs:
        inner.add(id(graph))
        for n in ir.traversal.RecursiveGraphIterator(graph):
            nodes.append(n)
            for attr in n.attributes.values():
                if attr.type == ir.AttributeType.GRAPH:
                    inner.add(id(attr.value))
                elif attr.type == ir.AttributeType.GRAPHS:
                    inner.update(id(g) for g in attr.value)
    return [v for n in nodes for v in n.inputs if v is not None and id(v.graph) not in inner]


def _is_cache_update(node: ir.Node, value: ir.Value) -> bool:
    """A KV-cache update: ``Concat`` of a graph input (the past) and new values whose
    result is a graph output (the present), as the KV-cache export emits per layer."""
    return (node.op_type == "Concat" and value.is_graph_output()
            and any(v is not None and v.producer() is None and v.is_graph_input() for v in node.inputs))


class Sources:
    """Memoized sources (module docstring) of values of one model: frozensets of tokens."""

    def __init__(self):
        self._memo: dict[int, frozenset] = {}

    def _edges(self, value: ir.Value) -> frozenset | list[ir.Value]:
        """The value's own sources when it is a stop, else the values to walk to."""
        if _is_constant(value):
            return frozenset()
        node = value.producer()
        if node is None:
            kind = "input" if value.is_graph_input() else "outer"
            return frozenset({(kind, value.name or str(id(value)))})
        if node.op_type in _NO_DATA:
            return frozenset()
        if _is_attention(node):
            return frozenset({("attention", node.name or str(id(node)), id(node))})
        inputs = list(node.inputs[:1] if node.op_type in _DATA_INPUT_ONLY else node.inputs)
        inputs += _captured(node)
        if _is_cache_update(node, value):
            # present = Concat(past, new): the past is this attention's own earlier K/V, not
            # another stream, so only the new keys/values say where K/V come from.
            inputs = [v for v in inputs if not (v is not None and v.producer() is None and v.is_graph_input())]
        return [v for v in inputs if v is not None and not _is_scalar(v)]

    def of(self, value: ir.Value | None) -> frozenset:
        if value is None:
            return frozenset()
        stack = [(value, False)]
        while stack:
            v, expanded = stack.pop()
            if id(v) in self._memo:
                continue
            edges = self._edges(v)
            if isinstance(edges, frozenset):
                self._memo[id(v)] = edges
            elif expanded:
                self._memo[id(v)] = frozenset().union(*(self._memo[id(e)] for e in edges))
            else:
                stack.append((v, True))
                stack.extend((e, False) for e in edges if id(e) not in self._memo)
        return self._memo[id(value)]


def _describe(tokens) -> str:
    names = sorted(f"attention '{t[1]}'" if t[0] == "attention" else f"'{t[1]}'" for t in tokens)
    shown = ", ".join(names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def structural_kind(node: ir.Node, sources: Sources | None = None) -> tuple[str, str]:
    """``(kind, why)`` from the data flow alone (module docstring)."""
    sources = sources or Sources()
    query, key, value = node.inputs[0], node.inputs[1], node.inputs[2]
    if query is key and (value is None or value is key):
        return SELF, "Q, K and V are one value"
    q = sources.of(query)
    kv = sources.of(key) | sources.of(value)
    if not kv:
        return UNKNOWN, "K/V read no graph input or earlier attention (constants only)"
    if kv == q:
        return SELF, "K/V derive from the same activation as Q"
    extra, missing = kv - q, q - kv
    if extra:
        return CROSS, f"K/V read {_describe(extra)}, which Q does not"
    return CROSS, f"K/V do not read Q's {_describe(missing)}"


# --- module scope ---------------------------------------------------------------------

def _nearest_scope(value: ir.Value | None, max_hops: int) -> str | None:
    for _ in range(max_hops):
        node = value.producer() if value is not None else None
        if node is None:
            return None
        scope = enclosing_module(node)
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
    scope = enclosing_module(node)
    if scope:
        return scope
    found = [_nearest_scope(v, max_hops) for v in node.inputs[:3]]
    if any(s is None for s in found):
        return None
    return _common_prefix(found)


# TorchScript's node names: "/model/layers.0/self_attn/MatMul_1" (module path, then the op).
_TORCHSCRIPT_NAME = re.compile(r"^/(?:[\w.]+/)+\w+$")


def _name_scope(node: ir.Node | None) -> str | None:
    if node is None or not node.name or not _TORCHSCRIPT_NAME.match(node.name):
        return None
    return ".".join(node.name.split("/")[1:-1])


def _hint_scope(node: ir.Node) -> tuple[str | None, bool]:
    """The attention's module path: exporter metadata, else TorchScript node names of Q/K/V
    (second item True: the path came from names, without module classes)."""
    scope = attention_scope(node)
    if scope:
        return scope, False
    names = [_name_scope(v.producer()) if v is not None else None for v in node.inputs[:3]]
    names.append(_name_scope(next((u.node for u in node.outputs[0].uses()), None)))
    found = [n for n in names if n]
    return (_common_prefix(found) if found else None), True


def _in_joint_block(node: ir.Node) -> bool:
    """SD3.5's dual-attention blocks name their second *self* attention ``attn2``."""
    for candidate in [node] + [v.producer() for v in node.inputs[:3] if v is not None]:
        classes = module_classes(candidate) if candidate else None
        if classes and any("Joint" in str(c) for c in classes):
            return True
    return False


def scope_kind(node: ir.Node, scope: str | None, classes_known: bool = True) -> str | None:
    """``"self"``/``"cross"`` when the module name says so, else None. diffusers' ``attn2``
    is cross attention except in SD3.5's joint blocks, so without the module classes
    (TorchScript names) it says nothing."""
    if not scope:
        return None
    last = scope.rsplit(".", 1)[-1].lower()
    if last in _CROSS_NAMES or "cross" in last:
        if last == "attn2" and (not classes_known or _in_joint_block(node)):
            return None
        return CROSS
    if last in _SELF_NAMES or last.startswith("self"):
        return SELF
    return None


@dataclasses.dataclass(frozen=True)
class Classification:
    kind: str  # SELF | CROSS | UNKNOWN
    reason: str  # one line: the evidence, or for UNKNOWN why it was refused


def classify(node: ir.Node, sources: Sources | None = None) -> Classification:
    """Structure, corroborated by the module scope (module docstring)."""
    kind, why = structural_kind(node, sources)
    scope, from_names = _hint_scope(node)
    named = scope_kind(node, scope, classes_known=not from_names)
    if kind == UNKNOWN:
        return Classification(UNKNOWN, why)
    if named is not None and named != kind:
        return Classification(UNKNOWN, f"structure says {kind} ({why}) but module '{scope}' says {named}")
    return Classification(kind, why)


def attention_kind(node: ir.Node, sources: Sources | None = None) -> str:
    """``"self"``, ``"cross"`` or ``"unknown"`` for a 4D ``Attention`` node (module docstring)."""
    return classify(node, sources).kind
