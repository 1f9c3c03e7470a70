"""``cse``: after it, no two nodes compute the same op on the same inputs with the
same attributes (side-effect-free ops only)."""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes import common

from genzip.passes.base import GenzipPass, GenzipPassResult
from genzip.passes.cleanup.counting import count_nodes


class CommonSubexpressionEliminationPass(GenzipPass):
    name = "cse"
    summary = "merge identical nodes"

    def run(self, model: ir.Model) -> GenzipPassResult:
        before = count_nodes(model)
        result = common.CommonSubexpressionEliminationPass()(model)
        removed = before - count_nodes(model)
        return GenzipPassResult(model, bool(result.modified), {"nodes_merged": removed})
