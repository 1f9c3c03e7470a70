"""``fold-constants``: after it, nodes whose inputs are all constants (below the
size limit) are replaced by initializers, and dead producers are removed."""

from __future__ import annotations

import dataclasses

import onnx_ir as ir
from onnxscript.optimizer import fold_constants

from genzip.passes.cleanup._counting import count_nodes
from genzip.passes.infra.context import PassContext
from genzip.passes.infra.contract import GenzipPass, GenzipPassResult


@dataclasses.dataclass(frozen=True, kw_only=True)
class FoldConstantsOptions:
    # Outputs larger than this many elements stay as computations, so folding
    # never bloats the file (onnxscript's own default is 1024).
    size_limit: int = 1 << 20

    def __post_init__(self):
        if self.size_limit < 0:
            raise ValueError("size-limit must be >= 0")


class FoldConstantsPass(GenzipPass):
    name = "fold-constants"
    Options = FoldConstantsOptions
    summary = "evaluate constant subgraphs into initializers (onnxscript folder)"

    def run(self, model: ir.Model, context: PassContext) -> GenzipPassResult:
        before = count_nodes(model)
        result = fold_constants(model, output_size_limit=self.options.size_limit)
        from onnx_ir.passes import common

        common.RemoveUnusedNodesPass()(model)
        removed = before - count_nodes(model)
        return GenzipPassResult(model, bool(result.modified) or removed > 0, {"nodes_folded": removed})
