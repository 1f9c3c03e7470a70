"""``cse``: after it, no two nodes compute the same op on the same inputs with the
same attributes (side-effect-free ops only)."""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes import common

from genzip.passes.cleanup._counting import count_nodes
from genzip.passes.infra.context import PassContext
from genzip.passes.infra.contract import GenzipPass, GenzipPassResult


class CommonSubexpressionEliminationPass(GenzipPass):
    name = "cse"
    summary = "merge identical nodes"

    def run(self, model: ir.Model, context: PassContext) -> GenzipPassResult:
        before = count_nodes(model)
        result = common.CommonSubexpressionEliminationPass()(model)
        removed = before - count_nodes(model)
        return GenzipPassResult(model, bool(result.modified), {"nodes_merged": removed})
