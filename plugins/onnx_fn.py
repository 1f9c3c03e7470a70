"""A small recorder for ONNX function bodies built from standard ops.

Invariant: every value a ``FnBuilder`` creates has a unique name within the body,
and constants are ``Constant`` nodes (functions cannot hold initializers), so the
finished ``ir.Function`` serializes and inlines without renaming.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

GENZIP_DOMAIN = "genzip"
GENZIP_OPSET = 1
# The lowest default-domain opset with the ops the bodies use (Attention is opset 23).
MIN_ONNX_OPSET = 23


class FnBuilder:
    """Records nodes in order; ``op`` returns the output value(s) of the new node."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.nodes: list[ir.Node] = []
        self._count = 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}_{hint}_{self._count}"

    def op(self, op_type: str, *inputs: ir.Value | None, _outputs: int = 1, **attrs) -> ir.Value | tuple:
        attributes = []
        for key, value in attrs.items():
            attributes.append(value if isinstance(value, ir.Attr) else ir.convenience.convert_attribute(key, value))
        node = ir.Node("", op_type, list(inputs), attributes, num_outputs=_outputs, name=self._name(op_type))
        for out in node.outputs:
            out.name = self._name(op_type.lower())
        self.nodes.append(node)
        return node.outputs[0] if _outputs == 1 else tuple(node.outputs)

    def const(self, array: np.ndarray | Sequence, dtype=np.int64) -> ir.Value:
        tensor = ir.tensor(np.asarray(array, dtype=dtype))
        return self.op("Constant", value=tensor)

    def ints(self, *values: int) -> ir.Value:
        """A 1-D int64 constant, the form Shape arithmetic, Pad and Reshape use."""
        return self.const(list(values))

    def scalar(self, value: float | int, dtype=np.float32) -> ir.Value:
        return self.const(value, dtype=dtype)

    def function(
        self,
        name: str,
        overload: str,
        inputs: Sequence[ir.Value],
        outputs: Sequence[ir.Value],
        onnx_opset: int,
        attributes: Sequence[ir.Attr],
        doc: str = "",
    ) -> ir.Function:
        graph = ir.Graph(
            list(inputs),
            list(outputs),
            nodes=self.nodes,
            opset_imports={"": onnx_opset},
            name=f"{name}_{overload}" if overload else name,
            doc_string=doc or None,
        )
        return ir.Function(GENZIP_DOMAIN, name, overload, graph=graph, attributes=list(attributes))


def attr_params(**kinds: ir.AttributeType) -> list[ir.Attr]:
    """Function attribute parameters without defaults (the caller always sets them)."""
    return [ir.Attr(key, kind, None) for key, kind in kinds.items()]


def install_function(model: ir.Model, function: ir.Function) -> ir.Function:
    """Add ``function`` to ``model`` unless an identical identifier is already there.

    The body of a given (name, overload) depends only on the overload's parameters,
    so an existing entry is the same function and is reused.
    """
    existing = model.functions.get(function.identifier())
    if existing is not None:
        return existing
    model.functions[function.identifier()] = function
    model.opset_imports.setdefault(GENZIP_DOMAIN, GENZIP_OPSET)
    return function
