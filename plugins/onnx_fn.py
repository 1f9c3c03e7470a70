"""ONNX function bodies built from standard ops with ``genzip.ir_build.NodeBuilder``.

Invariant: every value a ``FnBuilder`` creates has a unique name within the body,
and constants are ``Constant`` nodes (functions cannot hold initializers), so the
finished ``ir.Function`` serializes and inlines without renaming.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from genzip.ir_build import NodeBuilder

GENZIP_DOMAIN = "genzip"
GENZIP_OPSET = 1
# The lowest default-domain opset with the ops the bodies use (Attention is opset 23).
MIN_ONNX_OPSET = 23


class FnBuilder(NodeBuilder):
    """A ``NodeBuilder`` whose nodes become a ``genzip``-domain function body."""

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
