"""``dce``: after it, every node contributes to a graph output (or has side effects),
and no unused model-local function or opset import remains."""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes import common

from genzip.passes.cleanup._counting import count_nodes
from genzip.passes.infra.context import PassContext
from genzip.passes.infra.contract import GenzipPass, GenzipPassResult


class DeadCodeEliminationPass(GenzipPass):
    name = "dce"
    summary = "remove nodes, functions and opset imports nothing uses"

    def run(self, model: ir.Model, context: PassContext) -> GenzipPassResult:
        before = count_nodes(model)
        functions_before = len(model.functions)
        modified = common.RemoveUnusedNodesPass()(model).modified
        modified |= common.RemoveUnusedFunctionsPass()(model).modified
        modified |= common.RemoveUnusedOpsetsPass()(model).modified
        stats = {
            "nodes_removed": before - count_nodes(model),
            "functions_removed": functions_before - len(model.functions),
        }
        return GenzipPassResult(model, modified, stats)
