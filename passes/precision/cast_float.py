"""``cast-float{dtype=fp16|bf16}``: after it, the model computes in ``dtype`` instead of float32.

Every float32 tensor becomes ``dtype``: initializers, ``Constant`` and other tensor
attributes, ``Cast(to=FLOAT)`` targets, graph inputs and outputs, value types, in
subgraphs (``If`` branches) and in model-local functions (the ``genzip`` custom ops'
bodies) too. Integer tensors are untouched, so Q/DQ graphs keep their int8/int4 weights
and only their scales change dtype (``DequantizeLinear`` then outputs ``dtype``).

Invariant (``ensures``): no float32 value remains except the inputs and outputs of
nodes kept in float32, which run between a ``Cast`` in and a ``Cast`` out: the ops in
``KEEP_FLOAT32`` (ONNX Runtime has no fp16 CPU kernel for them, or they feed index
arithmetic) and ops whose ONNX schema at the model's opset does not admit ``dtype``
(bf16 ``Einsum`` at opset 23); and the inputs an op's schema types as float32 itself,
not through a type variable (``Resize``'s ``scales``), fed through a ``Cast`` back.

It runs after the other passes (``genzip-compile --dtype`` appends it last), so
calibration, smoothing and sensitivity measure the float32 graph.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import common

from genzip.passes.infra.context import PassContext
from genzip.passes.infra.contract import GenzipPass, GenzipPassResult

DTYPES = {"fp16": ir.DataType.FLOAT16, "bf16": ir.DataType.BFLOAT16}
# Float ops left in float32: no fp16 kernel in ONNX Runtime's CPU provider (1.32), or
# position/index arithmetic that fp16's 11-bit mantissa would round (Range, CumSum).
KEEP_FLOAT32 = frozenset({"Range", "CumSum", "TopK", "RandomNormal", "RandomUniform", "RandomNormalLike",
                          "RandomUniformLike", "NonMaxSuppression", "RoiAlign", "Upsample"})
_DTYPE_ATTRS = ("to", "dtype")


@dataclasses.dataclass(frozen=True, kw_only=True)
class CastFloatOptions:
    dtype: Literal["fp16", "bf16"] = "fp16"


def _np_dtype(dtype: ir.DataType):
    if dtype == ir.DataType.BFLOAT16:
        import ml_dtypes

        return ml_dtypes.bfloat16
    return np.float16


def _cast_tensor(tensor, dtype: ir.DataType) -> ir.Tensor:
    return ir.Tensor(tensor.numpy().astype(_np_dtype(dtype)), name=tensor.name)


def _graphs(model: ir.Model):
    """The main graph, every subgraph, and every function body."""
    yield from (model.graph, *model.graph.subgraphs())
    for function in model.functions.values():
        yield function
        yield from function.subgraphs()


def _values(graph) -> list[ir.Value]:
    values = list(graph.inputs) + list(graph.outputs)
    if isinstance(graph, ir.Graph):
        values += list(graph.initializers.values())
    for node in graph:
        values += [v for v in node.inputs if v is not None] + list(node.outputs)
    return values


def _convert_attributes(node: ir.Node, dtype: ir.DataType) -> bool:
    changed = False
    for name, attr in list(node.attributes.items()):
        if attr.type == ir.AttributeType.TENSOR and attr.value.dtype == ir.DataType.FLOAT:
            node.attributes[name] = ir.AttrTensor(name, _cast_tensor(attr.value, dtype))
            changed = True
        elif name in _DTYPE_ATTRS and attr.type == ir.AttributeType.INT and attr.value == ir.DataType.FLOAT:
            node.attributes[name] = ir.AttrInt64(name, dtype)
            changed = True
    return changed


def _schema_admits(node: ir.Node, dtype: ir.DataType, opset: int) -> bool:
    """Whether every float type constraint of ``node``'s ONNX schema admits ``dtype``."""
    import onnx

    if node.domain not in ("", "ai.onnx"):
        return True  # genzip's functions are converted inside; other domains are the runtime's business
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, "")
    except onnx.defs.SchemaError:
        return True
    want = f"tensor({'float16' if dtype == ir.DataType.FLOAT16 else 'bfloat16'})"
    return all(want in c.allowed_type_strs for c in schema.type_constraints if "tensor(float)" in c.allowed_type_strs)


def _float32_inputs(node: ir.Node, opset: int) -> list[int]:
    """Indices of ``node``'s inputs its ONNX schema types as ``tensor(float)`` itself (not a type
    variable, e.g. ``Resize``'s ``scales``): they stay float32 whatever the compute dtype."""
    import onnx

    if node.domain not in ("", "ai.onnx"):
        return []
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, "")
    except onnx.defs.SchemaError:
        return []
    return [i for i, formal in enumerate(schema.inputs[:len(node.inputs)]) if formal.type_str == "tensor(float)"]


def _kept(node: ir.Node, dtype: ir.DataType, opset: int) -> bool:
    return (node.op_type in KEEP_FLOAT32 and node.domain in ("", "ai.onnx")) or not _schema_admits(node, dtype, opset)


def _keep_float32(node: ir.Node, graph, dtype: ir.DataType) -> int:
    """Run ``node`` in float32 between Casts; returns the Casts inserted."""
    inserted = 0
    for i, value in enumerate(node.inputs):
        if value is not None and value.dtype == dtype:
            cast = ir.node("Cast", [value], {"to": ir.DataType.FLOAT})
            cast.outputs[0].dtype, cast.outputs[0].shape = ir.DataType.FLOAT, value.shape
            graph.insert_before(node, cast)
            node.replace_input_with(i, cast.outputs[0])
            inserted += 1
    for out in node.outputs:
        if out.dtype != dtype:
            continue
        back = ir.node("Cast", [out], {"to": dtype})
        new = back.outputs[0]
        new.dtype, new.shape = dtype, out.shape
        for user, index in list(out.uses()):
            if user is not back:
                user.replace_input_with(index, new)
        outputs = graph.outputs
        for k, o in enumerate(outputs):
            if o is out:  # a graph output keeps its name
                name = out.name
                out.name = f"{name}.float32"
                new.name = name
                outputs[k] = new
        out.dtype = ir.DataType.FLOAT
        graph.insert_after(node, back)
        inserted += 1
    return inserted


class CastFloatPass(GenzipPass):
    name = "cast-float"
    Options = CastFloatOptions
    summary = "compute in fp16 or bf16: every float32 tensor, type and Cast converted (a few ops stay fp32)"
    transforming = True

    def run(self, model: ir.Model, context: PassContext) -> GenzipPassResult:
        dtype = DTYPES[self.options.dtype]
        stats = {"dtype": self.options.dtype, "initializers": 0, "values": 0, "attributes": 0, "kept_float32": 0,
                 "casts_inserted": 0}
        # Values the exporter or an earlier pass left untyped would escape conversion (and a
        # kept op's Casts): type them first, on the float32 graph.
        common.ShapeInferencePass(check_type=False, strict_mode=False, data_prop=False)(model)
        keep: list[tuple[ir.Node, object]] = []
        opset = model.opset_imports.get("", 23)
        for graph in _graphs(model):
            if isinstance(graph, ir.Graph):
                for value in graph.initializers.values():
                    if value.const_value is not None and value.const_value.dtype == ir.DataType.FLOAT:
                        value.const_value = _cast_tensor(value.const_value, dtype)
                        stats["initializers"] += 1
            seen: set[int] = set()
            for value in _values(graph):
                if id(value) not in seen and value.dtype == ir.DataType.FLOAT:
                    seen.add(id(value))
                    value.dtype = dtype
                    stats["values"] += 1
            for node in list(graph):
                if _kept(node, dtype, opset):
                    keep.append((node, graph))
                elif _convert_attributes(node, dtype):
                    stats["attributes"] += 1
        for node, graph in keep:
            inserted = _keep_float32(node, graph, dtype)
            stats["kept_float32"] += bool(inserted)
            stats["casts_inserted"] += inserted
        for graph in _graphs(model):
            for node in list(graph):
                for i in _float32_inputs(node, opset):
                    value = node.inputs[i]
                    if value is not None and value.dtype == dtype:
                        cast = ir.node("Cast", [value], {"to": ir.DataType.FLOAT})
                        cast.outputs[0].dtype, cast.outputs[0].shape = ir.DataType.FLOAT, value.shape
                        graph.insert_before(node, cast)
                        node.replace_input_with(i, cast.outputs[0])
                        stats["casts_inserted"] += 1
        modified = any(stats[k] for k in ("initializers", "values", "attributes"))
        return GenzipPassResult(model, modified, stats,
                                noop_reason=None if modified else "the model has no float32 tensor to convert")

    def ensures(self, model: ir.Model) -> None:
        super().ensures(model)
        for graph in _graphs(model):
            dtype, opset = DTYPES[self.options.dtype], model.opset_imports.get("", 23)
            kept = {id(v) for n in graph if _kept(n, dtype, opset) for v in (*n.inputs, *n.outputs) if v is not None}
            kept |= {id(n.inputs[i]) for n in graph for i in _float32_inputs(n, opset) if n.inputs[i] is not None}
            for value in _values(graph):
                if value.dtype == ir.DataType.FLOAT and id(value) not in kept:
                    raise ir.passes.PostconditionError(
                        f"pass '{self.name}' left float32 value '{value.name}' outside {sorted(KEEP_FLOAT32)}")


def cast_feeds(model: ir.Model, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``feeds`` (float32 arrays) in the dtypes of ``model``'s inputs after this pass."""
    out = dict(feeds)
    for value in model.graph.inputs:
        if value.name in out and out[value.name].dtype == np.float32 and value.dtype in DTYPES.values():
            out[value.name] = out[value.name].astype(_np_dtype(value.dtype))
    return out
