"""Find the whole attention block around a canonical self-attention, and clone it.

A block is what DiTFastAttn's AST skips: from the activation X that the Q, K and V
projections share, through the projections, head split, ``Attention``, head merge
and the output projection ``MatMul(+Add)``. Found structurally:

* backwards from each of Q, K, V along the data operand of
  Transpose/Reshape/QuantizeLinear/DequantizeLinear/Cast, of an integer GEMM
  (MatMulInteger, MatMulIntegerToFloat: its activation) and of a binary
  Add/Mul/Div/MatMul (the operand that is not a constant; of two computed operands,
  the one that is not a quantizer scale made by Max/ReduceMax/Div/Reciprocal) until
  the chains meet; the meeting value is X. The block's nodes are those chains plus
  every node they read from that X feeds (the per-token quantizer's row maxima of a
  ``w8a8-dynamic`` projection, which q, k and v share);
* forwards from the attention output through a single-use chain of
  Transpose/Reshape/QuantizeLinear/DequantizeLinear to the output projection: a
  MatMul with a constant weight, or a per-token dynamic int8 GEMM (the quantizer
  reading the value, ``MatMulInteger*``, its Cast/Mul rescaling), plus an Add with a
  constant bias when there is one; its output is the block output O.

Quantized projections (``quant{scheme=w8a8|fp8|w4a16}`` before ``share-attn``) fit
the same rules: an activation ``Q -> DQ`` pair is pass-through, and a weight
``DequantizeLinear`` of constants counts as a constant. Such weight DQ nodes used
only by the block belong to it, so they move into the branches next to their GEMM
(where ORT fuses ``DQ -> MatMul`` into an int8 GEMM, and an AST step skips them);
their quantized initializers stay in the outer graph. So do ``Cast`` nodes of
constants (``w4a8-dynamic``'s int4 weights widened to int8). Per-token dynamic
projections (``w8a8-dynamic``, ``w4a8-dynamic``) move whole, quantizer included, so
an ASC step quantizes the half it computes.

When the Q, K and V chains never meet (SD3's joint attention projects the image and the
text stream apart and attends over their concatenation), the block is the ``Attention``
node alone, reading Q, K and V (``attention_only``): a shared step skips the attention and
still runs the projections.

Invariant of a found ``Block``: every value produced inside it, except O, is used
only inside it and is not a graph output, so the nodes can move into ``If``
branches without changing anything else. Anything else makes ``find_block``
return a reason string instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import onnx_ir as ir

_PASS_THROUGH = frozenset({"Transpose", "Reshape", "QuantizeLinear", "DequantizeLinear", "Cast"})
_INT_GEMMS = frozenset({"MatMulInteger", "MatMulIntegerToFloat"})
_SCALE_OPS = frozenset({"Max", "ReduceMax", "Div", "Reciprocal"})
MAX_CHAIN = 12


@dataclasses.dataclass
class Block:
    xs: list[ir.Value]  # what the block reads: the Q/K/V projections' shared input, or Q, K, V
    attention: ir.Node
    nodes: list[ir.Node]  # topological order, attention included
    output: ir.Value  # output-projection result (the attention output of an attention-only block)
    attention_only: bool = False


def _constant(value: ir.Value | None) -> bool:
    if value is None:
        return False
    if value.const_value is not None or value.is_initializer():
        return True
    producer = value.producer()
    return producer is not None and (producer.op_type == "Constant" or _weight_node(producer))


def _weight_node(node: ir.Node) -> bool:
    """A DequantizeLinear or Cast of constants: a quantized weight, constant for the block."""
    return node.op_type in ("DequantizeLinear", "Cast") and all(v is None or _constant(v) for v in node.inputs)


def _weight_nodes(nodes: list[ir.Node]) -> list[ir.Node]:
    """Weight DequantizeLinear / Cast nodes feeding ``nodes`` and used by nothing else."""
    inside, found = set(nodes), []
    for node in nodes:
        for value in node.inputs:
            producer = value.producer() if value is not None else None
            if (producer is not None and producer not in inside and producer not in found and _weight_node(producer)
                    and not value.is_graph_output() and all(u.node in inside for u in value.uses())):
                found.append(producer)
    return found


def _data_operand(node: ir.Node) -> ir.Value | None:
    if node.op_type in _PASS_THROUGH or node.op_type in _INT_GEMMS:
        return node.inputs[0]
    if node.op_type in ("Add", "Mul", "Div", "MatMul") and len(node.inputs) == 2:
        data = [v for v in node.inputs if not _constant(v)]
        if len(data) == 2:  # a per-token rescale: follow the value, not its scale
            data = [v for v in data if v.producer() is None or v.producer().op_type not in _SCALE_OPS]
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


def _descendants(value: ir.Value) -> set[ir.Node]:
    seen: set[ir.Node] = set()
    stack = [u.node for u in value.uses()]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        stack.extend(u.node for out in node.outputs for u in out.uses())
    return seen


def _close(nodes: list[ir.Node], x: ir.Value, fed_by_x: set[ir.Node]) -> None:
    """Add to ``nodes`` every node fed by X that produces a value they read (X excluded).
    Values computed without X (shape arithmetic of other tensors) stay outer-scope reads."""
    inside = set(nodes)
    todo = list(nodes)
    while todo:
        node = todo.pop()
        for value in node.inputs:
            if value is None or value is x or _constant(value):
                continue
            producer = value.producer()
            if producer is not None and producer in fed_by_x and producer not in inside:
                inside.add(producer)
                nodes.append(producer)
                todo.append(producer)


def _projection(value: ir.Value) -> tuple[list[ir.Node], ir.Value] | None:
    """The output projection reading ``value``: (its nodes, its output before any bias)."""
    uses = list(value.uses())
    if len(uses) == 1 and uses[0].node.op_type == "MatMul" and uses[0].idx == 0 and _constant(uses[0].node.inputs[1]):
        return [uses[0].node], uses[0].node.outputs[0]
    # per-token dynamic int8 GEMM: Mul(value, 127/amax) -> QuantizeLinear -> MatMulInteger* -> Cast/Mul rescaling
    gemm = None
    for use in uses:
        if use.node.op_type == "Mul":
            q = [u.node for u in use.node.outputs[0].uses()]
            if len(q) == 1 and q[0].op_type == "QuantizeLinear":
                g = [u.node for u in q[0].outputs[0].uses()]
                if len(g) == 1 and g[0].op_type in _INT_GEMMS and _constant(g[0].inputs[1]):
                    gemm = g[0]
    if gemm is None:
        return None
    out = gemm.outputs[0]
    for _ in range(3):  # Cast -> Mul(w_scale) -> Mul(row amax)
        nxt = list(out.uses())
        if len(nxt) != 1 or out.is_graph_output() or nxt[0].node.op_type not in ("Cast", "Mul"):
            break
        out = nxt[0].node.outputs[0]
    nodes = [out.producer()]
    _close(nodes, value, _descendants(value))
    if any(u.node not in set(nodes) for u in value.uses()):
        return None
    return nodes, out


def _forward(value: ir.Value) -> tuple[list[ir.Node], ir.Value] | None:
    nodes: list[ir.Node] = []
    for _ in range(MAX_CHAIN):
        uses = list(value.uses())
        if value.is_graph_output() or not uses:
            return None
        if len(uses) == 1 and uses[0].node.op_type in _PASS_THROUGH and uses[0].idx == 0:
            nodes.append(uses[0].node)
            value = uses[0].node.outputs[0]
            continue
        found = _projection(value)
        if found is None:
            return None
        proj, out = found
        nodes.extend(proj)
        bias_uses = list(out.uses())
        if len(bias_uses) == 1 and not out.is_graph_output():
            add = bias_uses[0].node
            if add.op_type == "Add" and _constant(add.inputs[1 - bias_uses[0].idx]):
                nodes.append(add)
                out = add.outputs[0]
        return nodes, out
    return None


def _before_quantizer(x: ir.Value) -> ir.Value:
    """The float tensor a shared activation quantizer reads, when ``x`` is its output.

    Per-token dynamic q/k/v share one quantizer (``x_u8 = Q(x * 127/amax)``), so their
    chains meet at x_u8; the block must start at x, so its row maxima move with it (an ASC
    step quantizes only the half it computes)."""
    for _ in range(MAX_CHAIN):
        producer = x.producer()
        if producer is None or producer.op_type not in ("QuantizeLinear", "Mul", "Div"):
            break
        scaled = any(v is not None and v.producer() is not None and v.producer().op_type in _SCALE_OPS
                     for v in producer.inputs)
        nxt = _data_operand(producer)
        if nxt is None or (producer.op_type != "QuantizeLinear" and not scaled):
            break
        x = nxt
    return x


def _attention_only(attention: ir.Node) -> Block | str:
    """The block of an attention whose Q, K and V projections read different inputs (SD3's
    joint attention: image and text streams projected apart, attended over their
    concatenation): the ``Attention`` node alone, reading Q, K and V. A shared step then
    skips the attention but not the projections; the output is the same either way."""
    y = attention.outputs[0]
    if len(attention.inputs) != 3 or any(v is None for v in attention.inputs) or y.is_graph_output():
        return "no-shared-projection-input"
    return Block(list(dict.fromkeys(attention.inputs)), attention, [attention], y, attention_only=True)


def find_block(attention: ir.Node) -> Block | str:
    """The block around ``attention``, or why there is none (rules in the module docstring)."""
    chains = [_chain(v) for v in attention.inputs[:3]]
    others = [{id(v) for v in c} for c in chains[1:]]
    x = next((v for v in chains[0][1:] if all(id(v) in o for o in others)), None)
    if x is None:
        return _attention_only(attention)
    x = _before_quantizer(x)
    backward: list[ir.Node] = []
    for chain in chains:
        for value in chain:
            if value is x:
                break
            node = value.producer()
            if node is not None and node not in backward:
                backward.append(node)
    _close(backward, x, _descendants(x))
    forward = _forward(attention.outputs[0])
    if forward is None:
        return "no-output-projection"
    fwd_nodes, output = forward
    nodes = [n for n in backward if n is not attention] + [attention, *fwd_nodes]
    nodes += _weight_nodes(nodes)
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
    return Block([x], attention, nodes, output)


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
