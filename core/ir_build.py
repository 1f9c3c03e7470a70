"""The one way genzip builds new IR nodes: onnx-ir's ``ir.node`` plus unique names.

``NodeBuilder(prefix).op(op_type, *inputs, **attrs)`` builds a node with onnx-ir's
constructor (attributes given as Python values or ``ir.Attr``, converted by
onnx-ir), records it, and returns its output value (a tuple for ``_outputs > 1``).
Rewrites and function bodies build through it, so there is one signature to learn;
``append`` records a node built elsewhere (a copied ``Attention``).

Invariant: node and value names depend only on the prefix and on the order of
``op`` calls, so the same rewrite of the same graph names everything the same way
(artifacts hash identically run to run). Subclasses change only the naming
scheme (``_node_name``/``_output_names``), never how nodes are built.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_ir as ir


class NodeBuilder:
    """Records nodes in order under one name prefix; ``nodes`` is what was built."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.nodes: list[ir.Node] = []
        self._count = 0

    def op(self, op_type: str, *inputs: ir.Value | None, _outputs: int = 1, _domain: str = "",
           **attrs) -> ir.Value | tuple[ir.Value, ...]:
        node = ir.node(op_type, list(inputs), attrs or None, domain=_domain, num_outputs=_outputs,
                       name=self._node_name(op_type))
        for out, out_name in zip(node.outputs, self._output_names(op_type, _outputs)):
            if out_name is not None:
                out.name = out_name
        self.nodes.append(node)
        return node.outputs[0] if _outputs == 1 else tuple(node.outputs)

    def append(self, node: ir.Node) -> ir.Node:
        self.nodes.append(node)
        return node

    def const(self, array: np.ndarray | Sequence | float | int, dtype=np.int64) -> ir.Value:
        """A ``Constant`` node (function bodies and If branches cannot hold initializers)."""
        return self.op("Constant", value=ir.tensor(np.asarray(array, dtype=dtype)))

    def ints(self, *values: int) -> ir.Value:
        """A 1-D int64 constant, the form Shape arithmetic, Pad and Reshape use."""
        return self.const(list(values))

    def graph(self, outputs: Sequence[ir.Value], name: str) -> ir.Graph:
        """The recorded nodes as a subgraph (an If branch) with these outputs."""
        return ir.Graph([], list(outputs), nodes=self.nodes, name=name)

    # --- naming: prefix_Op_1, then each output prefix_op_2, ... -------------------------

    def _next(self) -> int:
        self._count += 1
        return self._count

    def _node_name(self, op_type: str) -> str:
        return f"{self.prefix}_{op_type}_{self._next()}"

    def _output_names(self, op_type: str, n: int) -> list[str | None]:
        return [f"{self.prefix}_{op_type.lower()}_{self._next()}" for _ in range(n)]
