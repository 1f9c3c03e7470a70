"""``fold-constants``: after it, nodes whose inputs are all constants (below the
size limit) are replaced by initializers, dead producers are removed, and every
initializer's declared shape is its tensor's shape."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir
from onnxscript.optimizer import fold_constants

from genzip.passes.cleanup._counting import count_nodes
from genzip.passes.infra.context import PassContext
from genzip.passes.infra.contract import GenzipPass, GenzipPassResult

# onnxscript keeps every ConstantOfShape, so filled tensors do not bloat the file. Exporters
# (TorchScript's Expand) also build 4-element shape vectors with it; folding those lets shape
# inference see static mask and head dims. Filled tensors stay computations above this size.
SMALL_CONSTANT_OF_SHAPE = 1024


def _fold_small_constant_of_shape(node: ir.Node) -> bool | None:
    """onnxscript's ``should_fold``: True for a ConstantOfShape with a small constant shape,
    None (onnxscript's default rules) for everything else."""
    if node.op_type != "ConstantOfShape" or node.domain not in ("", "ai.onnx"):
        return None
    shape = node.inputs[0].const_value if node.inputs and node.inputs[0] is not None else None
    if shape is None:
        return None
    dims = shape.numpy().reshape(-1)
    return True if np.all(dims >= 0) and int(np.prod(dims)) <= SMALL_CONSTANT_OF_SHAPE else None


def _refine_initializer_shapes(model: ir.Model) -> int:
    """Give initializers their tensors' shapes.

    Folding keeps the shape the folded value was declared with, which an exporter's shape
    inference may have left symbolic (``[unk, 12, 32]`` for a tensor of ``[1, 12, 32]``);
    shape inference then propagates that stale symbol downstream.
    """
    refined = 0
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if tensor is None or value.shape is None or value.shape == tensor.shape:
            continue
        value.shape = ir.Shape(list(tensor.shape))
        refined += 1
    return refined


def fold(model: ir.Model, size_limit: int) -> bool:
    """Fold constant subgraphs (outputs up to ``size_limit`` elements); True when anything changed."""
    result = fold_constants(model, output_size_limit=size_limit, should_fold=_fold_small_constant_of_shape)
    refined = _refine_initializer_shapes(model)
    return bool(result.modified) or refined > 0


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
        modified = fold(model, self.options.size_limit)
        from onnx_ir.passes import common

        common.RemoveUnusedNodesPass()(model)
        removed = before - count_nodes(model)
        return GenzipPassResult(model, modified or removed > 0, {"nodes_folded": removed})
