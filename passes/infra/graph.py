"""Graph helpers for rewrite passes that must leave everything they did not rewrite alone."""

from __future__ import annotations

import onnx_ir as ir

TypeRecord = tuple[ir.Value, "ir.TypeProtocol | None", "ir.Shape | None"]


def model_graphs(model: ir.Model) -> list[ir.Graph | ir.Function]:
    """The main graph, its (nested) subgraphs, then model functions, in that order."""
    graphs: list[ir.Graph | ir.Function] = [model.graph]
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                graphs.append(attr.as_graph())
            elif attr.type == ir.AttributeType.GRAPHS:
                graphs.extend(attr.as_graphs())
    return graphs + list(model.functions.values())


def is_used(node: ir.Node) -> bool:
    return any(out.uses() or out.is_graph_output() for out in node.outputs)


def live_nodes(model: ir.Model) -> set[ir.Node]:
    return {n for g in model_graphs(model) for n in g if is_used(n)}


def remove_orphans(live_before: set[ir.Node]) -> int:
    """Remove the nodes that were used before a rewrite and are unused now, and only those.

    A full dead-code sweep would also delete dead code that was there before the
    rewrite, which is ``dce``'s business, not the rewriting pass's.
    """
    removed = 0
    pending = [n for n in live_before if n.graph is not None and not is_used(n)]
    while pending:
        node = pending.pop()
        if node.graph is None or is_used(node):
            continue
        producers = [v.producer() for v in node.inputs if v is not None]
        node.graph.remove(node, safe=True)
        removed += 1
        pending.extend(p for p in producers if p is not None and p in live_before)
    return removed


def untyped_constants(model: ir.Model) -> list[TypeRecord]:
    """Constant outputs lacking a type or shape, to restore after onnxscript's rewriter.

    The rewriter's constant propagation types every Constant output it visits, which
    would show up in the serialized model even when nothing was rewritten.
    """
    return [
        (n.outputs[0], n.outputs[0].type, n.outputs[0].shape)
        for g in model_graphs(model) for n in g
        if n.op_type == "Constant" and len(n.outputs) == 1
        and (n.outputs[0].type is None or n.outputs[0].shape is None)
    ]


def restore_types(records: list[TypeRecord]) -> None:
    for value, type_, shape in records:
        value.type, value.shape = type_, shape
