"""Give an exported graph's inputs, outputs and symbolic dims meaningful names."""

from __future__ import annotations

from collections.abc import Sequence

import onnx_ir as ir
import onnx_ir.passes.common as common_passes


def _all_values(graph: ir.Graph):
    yield from graph.inputs
    yield from graph.initializers.values()
    for node in ir.traversal.RecursiveGraphIterator(graph):
        yield from node.outputs


def rename_value(graph: ir.Graph, value: ir.Value, name: str) -> None:
    """Rename ``value`` to ``name``; a different value already called ``name`` is
    renamed out of the way (``name_1``, ...)."""
    if value.name == name:
        return
    taken = {v.name for v in _all_values(graph) if v.name}
    for other in list(_all_values(graph)):
        if other is not value and other.name == name:
            k = 1
            while f"{name}_{k}" in taken:
                k += 1
            other.name = f"{name}_{k}"  # an initializer's key follows its name
            taken.add(other.name)
    value.name = name


def keep_outputs(model: ir.Model, count: int) -> None:
    """Drop every graph output after the first ``count`` and the nodes only they used."""
    if count >= len(model.graph.outputs):
        return
    del model.graph.outputs[count:]
    common_passes.RemoveUnusedNodesPass()(model)


def name_outputs(graph: ir.Graph, names: Sequence[str]) -> None:
    for value, name in zip(graph.outputs, names):
        if value.is_graph_input() or sum(v is value for v in graph.outputs) > 1:
            continue  # renaming would rename an input / several outputs at once
        rename_value(graph, value, name)


def name_symbolic_dim(graph: ir.Graph, old: str, new: str) -> None:
    """Replace the symbolic dim ``old`` by ``new`` in every value's shape."""
    for value in _all_values(graph):
        shape = value.shape
        if shape is None or not any(isinstance(d, ir.SymbolicDim) and d.value == old for d in shape):
            continue
        dims = [ir.SymbolicDim(new) if isinstance(d, ir.SymbolicDim) and d.value == old else d for d in shape]
        value.shape = ir.Shape(dims)
