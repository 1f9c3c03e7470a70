"""Node counting shared by the cleanup wrappers, so their stats say what changed."""

from __future__ import annotations

import onnx_ir as ir


def count_nodes(model: ir.Model) -> int:
    return sum(1 for _ in ir.traversal.RecursiveGraphIterator(model.graph)) + sum(
        len(f) for f in model.functions.values()
    )
