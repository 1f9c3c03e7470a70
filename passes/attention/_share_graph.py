"""Graph-building helpers of ``share-attn``: a node builder for If branches, cache inputs,
and moving a block's initializers into the one branch that reads them.

Invariant kept by ``move_initializers``: an initializer is moved, never copied, and
only when every reader is inside the branch, so the model holds each weight once.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from genzip.ir_build import NodeBuilder


class Builder(NodeBuilder):
    """Nodes ``<prefix><Op>_<n>`` and outputs ``<prefix><op>_<n>_<i>`` (the prefix is
    unique per branch, so names never clash across If branches)."""

    def _node_name(self, op_type: str) -> str:
        return f"{self.prefix}{op_type}_{self._next()}"

    def _output_names(self, op_type: str, n: int) -> list[str | None]:
        return [f"{self.prefix}{op_type.lower()}_{self._count}_{i}" for i in range(n)]


def if_(b: Builder, cond: ir.Value, then: ir.Graph, other: ir.Graph, n: int = 2) -> tuple:
    return b.op("If", cond, _outputs=n, then_branch=then, else_branch=other)


def move_initializers(graph: ir.Graph, branch: ir.Graph) -> None:
    """Outer initializers read only inside ``branch`` become its own (moved, never copied).

    ORT fuses ``DequantizeLinear(W) -> MatMul`` into an int8 GEMM only when W, its
    scale and zero point are initializers of the GEMM's own graph, not outer-scope values.
    """
    inside = {id(n) for n in ir.traversal.RecursiveGraphIterator(branch)}
    for name, value in list(graph.initializers.items()):
        if value.is_graph_input() or value.is_graph_output():
            continue
        users = [u.node for u in value.uses()]
        if users and all(id(node) in inside for node in users):
            graph.initializers.pop(name)
            branch.register_initializer(value)


def dims(value: ir.Value) -> list:
    return [d if isinstance(d, int) else str(d) for d in value.shape] if value.shape is not None else None


def cache_input(graph: ir.Graph, name: str, like: ir.Value) -> ir.Value:
    """A graph input shaped like ``like`` whose default (initializer) is empty along the batch.

    The batch dim is always symbolic, so the empty default and any real batch both fit.
    """
    shape = list(like.shape)
    batch = shape[0] if isinstance(shape[0], ir.SymbolicDim) and shape[0].value else "share_batch"
    empty = [0] + [d if isinstance(d, int) else 1 for d in shape[1:]]
    value = ir.Value(name=name, type=ir.TensorType(like.dtype), shape=ir.Shape([batch, *shape[1:]]))
    value.const_value = ir.tensor(np.zeros(empty, dtype=like.dtype.numpy()), name=name)
    graph.inputs.append(value)
    graph.register_initializer(value)
    return value
