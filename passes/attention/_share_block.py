"""Find the whole attention block around a canonical self-attention, and clone it.

A block is what DiTFastAttn's AST skips: from the activation X that the Q, K and V
projections share, through the projections, head split, ``Attention``, head merge
and the output projection ``MatMul(+Add)``. Found structurally:

* backwards from each of Q, K, V along the data operand of
  Transpose/Reshape/QuantizeLinear/DequantizeLinear/Add/MatMul (Add and MatMul:
  the operand that is not a constant) until the chains meet; the meeting value is X;
* forwards from the attention output through a single-use chain of
  Transpose/Reshape/QuantizeLinear/DequantizeLinear to a MatMul with a constant
  weight, plus an Add with a constant bias when there is one; its output is the
  block output O.

Quantized projections (``quant{scheme=w8a8|fp8|w4a16}`` before ``share-attn``) fit
the same rules: an activation ``Q -> DQ`` pair is pass-through, and a weight
``DequantizeLinear`` of constants counts as a constant. Such weight DQ nodes used
only by the block belong to it, so they move into the branches next to their GEMM
(where ORT fuses ``DQ -> MatMul`` into an int8 GEMM, and an AST step skips them);
their quantized initializers stay in the outer graph.

Invariant of a found ``Block``: every value produced inside it, except O, is used
only inside it and is not a graph output, so the nodes can move into ``If``
branches without changing anything else. Anything else makes ``find_block``
return a reason string instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import onnx_ir as ir

_PASS_THROUGH = frozenset({"Transpose", "Reshape", "QuantizeLinear", "DequantizeLinear"})
MAX_CHAIN = 8


@dataclasses.dataclass
class Block:
    x: ir.Value  # shared input of the Q/K/V projections
    attention: ir.Node
    nodes: list[ir.Node]  # topological order, attention included
    output: ir.Value  # output-projection result


def _constant(value: ir.Value | None) -> bool:
    if value is None:
        return False
    if value.const_value is not None or value.is_initializer():
        return True
    producer = value.producer()
    return producer is not None and (producer.op_type == "Constant" or _weight_dq(producer))


def _weight_dq(node: ir.Node) -> bool:
    """A DequantizeLinear of constants: a quantized weight, constant for the block."""
    return node.op_type == "DequantizeLinear" and all(v is None or _constant(v) for v in node.inputs)


def _weight_dqs(nodes: list[ir.Node]) -> list[ir.Node]:
    """Weight DequantizeLinear nodes feeding ``nodes`` and used by nothing else."""
    inside, found = set(nodes), []
    for node in nodes:
        for value in node.inputs:
            producer = value.producer() if value is not None else None
            if (producer is not None and producer not in inside and producer not in found and _weight_dq(producer)
                    and not value.is_graph_output() and all(u.node in inside for u in value.uses())):
                found.append(producer)
    return found


def _data_operand(node: ir.Node) -> ir.Value | None:
    if node.op_type in _PASS_THROUGH:
        return node.inputs[0]
    if node.op_type in ("Add", "MatMul") and len(node.inputs) == 2:
        data = [v for v in node.inputs if not _constant(v)]
        return data[0] if len(data) == 1 else None
    return None


def _chain(value: ir.Value) -> list[ir.Value]:
    """Values from ``value`` back through projection-like ops (value first)."""
    out = [value]
    for _ in range(MAX_CHAIN):
        node = value.producer()
        if node is None:
            break
        nxt = _data_operand(node)
        if nxt is None:
            break
        out.append(nxt)
        value = nxt
    return out


def _forward(value: ir.Value) -> tuple[list[ir.Node], ir.Value] | None:
    nodes: list[ir.Node] = []
    for _ in range(MAX_CHAIN):
        uses = list(value.uses())
        if len(uses) != 1 or value.is_graph_output():
            return None
        node = uses[0].node
        if node.op_type in _PASS_THROUGH and uses[0].idx == 0:
            nodes.append(node)
            value = node.outputs[0]
            continue
        if node.op_type == "MatMul" and uses[0].idx == 0 and _constant(node.inputs[1]):
            nodes.append(node)
            out = node.outputs[0]
            bias_uses = list(out.uses())
            if len(bias_uses) == 1 and not out.is_graph_output():
                add = bias_uses[0].node
                if add.op_type == "Add" and _constant(add.inputs[1 - bias_uses[0].idx]):
                    nodes.append(add)
                    out = add.outputs[0]
            return nodes, out
        return None
    return None


def find_block(attention: ir.Node) -> Block | str:
    """The block around ``attention``, or why there is none (rules in the module docstring)."""
    chains = [_chain(v) for v in attention.inputs[:3]]
    others = [{id(v) for v in c} for c in chains[1:]]
    x = next((v for v in chains[0][1:] if all(id(v) in o for o in others)), None)
    if x is None:
        return "no-shared-projection-input"
    backward: list[ir.Node] = []
    for chain in chains:
        for value in chain:
            if value is x:
                break
            node = value.producer()
            if node is not None and node not in backward:
                backward.append(node)
    forward = _forward(attention.outputs[0])
    if forward is None:
        return "no-output-projection"
    fwd_nodes, output = forward
    nodes = [*backward, attention, *fwd_nodes]
    nodes += _weight_dqs(nodes)
    inside = set(nodes)
    for node in nodes:
        for out in node.outputs:
            if out is output:
                continue
            if out.is_graph_output() or any(u.node not in inside for u in out.uses()):
                return "block-value-used-outside"
    graph = attention.graph
    order = {id(n): i for i, n in enumerate(graph)}
    nodes.sort(key=lambda n: order[id(n)])
    return Block(x, attention, nodes, output)


def clone_nodes(
    nodes: list[ir.Node],
    mapping: dict[int, ir.Value],
    prefix: str,
    replace: dict[int, Callable[[list[ir.Value | None], list[ir.Node]], list[ir.Value]]] | None = None,
) -> tuple[list[ir.Node], dict[int, ir.Value]]:
    """Copies of ``nodes`` reading ``mapping[id(v)]`` instead of ``v`` (outer values as they are).

    ``replace[id(node)](inputs, made)`` builds substitute nodes itself: it gets the
    mapped inputs, appends the nodes it creates to ``made`` and returns the values
    standing for the node's outputs. Output names get ``prefix`` so names stay unique across
    branches.
    """
    mapping = dict(mapping)
    replace = replace or {}
    made: list[ir.Node] = []
    for node in nodes:
        inputs = [mapping.get(id(v), v) if v is not None else None for v in node.inputs]
        if id(node) in replace:
            before = len(made)
            outs = replace[id(node)](inputs, made)
            if len(made) == before:
                raise ValueError("replacement made no nodes")
        else:
            new = ir.Node(node.domain, node.op_type, inputs, list(node.attributes.values()),
                          overload=node.overload, num_outputs=len(node.outputs), name=f"{prefix}{node.name}")
            for old, out in zip(node.outputs, new.outputs):
                out.name = f"{prefix}{old.name}"
                # dtype only: a share-cfg branch runs the block on half the batch.
                # (Untyped values, e.g. quant's Q/DQ outputs, stay untyped.)
                if old.dtype is not None:
                    out.dtype = old.dtype
            made.append(new)
            outs = list(new.outputs)
        for old, out in zip(node.outputs, outs):
            mapping[id(old)] = out
    return made, mapping
