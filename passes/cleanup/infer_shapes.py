"""``infer-shapes``: after it, every value ONNX shape inference can type carries
its dtype and (symbolic) shape."""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes import common

from genzip.passes.base import GenzipPass, GenzipPassResult


def _known(model: ir.Model) -> int:
    count = 0
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        for v in node.outputs:
            count += v.shape is not None and v.dtype is not None
    return count


class InferShapesPass(GenzipPass):
    name = "infer-shapes"
    summary = "run ONNX shape inference and store shapes/dtypes on values"

    def run(self, model: ir.Model) -> GenzipPassResult:
        before = _known(model)
        common.ShapeInferencePass(check_type=True, strict_mode=True, data_prop=True)(model)
        after = _known(model)
        # Only newly typed values count as a change; re-inferring known shapes is not one.
        return GenzipPassResult(model, after != before, {"values_typed": after - before})
