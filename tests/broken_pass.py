"""A deliberately buggy pass for the CLI reproducer test: it leaves a dangling use."""

from __future__ import annotations

import onnx_ir as ir

from genzip.passes.infra.context import PassContext
from genzip.passes.infra.contract import GenzipPass, GenzipPassResult


class DanglingUsePass(GenzipPass):
    name = "test-dangling-use"

    def run(self, model: ir.Model, context: PassContext) -> GenzipPassResult:
        node = next(iter(model.graph))
        orphan = ir.Value(name="orphan", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([1]))
        node.replace_input_with(0, orphan)
        return GenzipPassResult(model, True, {})
