"""Named symbolic shapes for graphs with dynamic batch and sequence axes.

Invariant: ``name_dims`` only ever replaces a value's shape with one ONNX Runtime's
symbolic shape inference derived for it; values it could not type keep theirs, and the
graph's nodes are never touched.

Why: Optimum's exports (and any ``torch.onnx.export(..., dynamic_axes=...)``) keep
batch and sequence dims symbolic. ONNX's own shape inference gives every dim it cannot
name a fresh ``unk__N``, so a Softmax's output no longer compares equal to its input and
the attention patterns cannot prove Q, K, V and the mask line up. ORT's symbolic
inference (the one its transformer optimizer relies on) carries the graph inputs' dim
names through the Shape/Gather/Concat/Reshape arithmetic, e.g.
``past_sequence_length + sequence_length``.
"""

from __future__ import annotations

import logging

import onnx
import onnx.helper
import onnx_ir as ir

from genzip.ort_session import is_large

logger = logging.getLogger(__name__)

# What ORT's inference raises on graphs it cannot follow (its code paths raise these).
_INFERENCE_ERRORS = (ValueError, TypeError, KeyError, IndexError, AssertionError, AttributeError,
                     ZeroDivisionError, NotImplementedError)


def _typed(type_proto: onnx.TypeProto) -> tuple[ir.Shape, ir.DataType] | None:
    if not type_proto.HasField("tensor_type") or not type_proto.tensor_type.HasField("shape"):
        return None
    dims = []
    for d in type_proto.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(d.dim_value)
        else:
            dims.append(ir.SymbolicDim(d.dim_param or None))
    return ir.Shape(dims), ir.DataType(type_proto.tensor_type.elem_type)


_CONSTANT_ATTRS = {"value_int": onnx.TensorProto.INT64, "value_ints": onnx.TensorProto.INT64,
                   "value_float": onnx.TensorProto.FLOAT, "value_floats": onnx.TensorProto.FLOAT}


def _constants_as_tensors(graph: onnx.GraphProto) -> None:
    """``Constant(value_int[s]/value_float[s])`` as ``Constant(value=tensor)`` (ORT's inference
    reads only ``value``; folding writes the other forms)."""
    for node in graph.node:
        if node.op_type != "Constant" or len(node.attribute) != 1 or node.attribute[0].name not in _CONSTANT_ATTRS:
            continue
        attr = node.attribute[0]
        values = onnx.helper.get_attribute_value(attr)
        dims = [len(values)] if isinstance(values, list) else []
        tensor = onnx.helper.make_tensor("value", _CONSTANT_ATTRS[attr.name], dims,
                                         values if isinstance(values, list) else [values])
        del node.attribute[:]
        node.attribute.append(onnx.helper.make_attribute("value", tensor))


def _inferred(model: ir.Model) -> dict[str, tuple[ir.Shape, ir.DataType]]:
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    proto = ir.to_proto(model)
    # Start from the graph inputs alone: ORT's inference keeps any value_info it is given,
    # and ONNX's inference may already have named these dims unk__N.
    del proto.graph.value_info[:]
    _constants_as_tensors(proto.graph)
    # The class rather than its infer_shapes(): that one writes sym_shape_infer_temp.onnx
    # into the working directory when inference stops short. A partial result still names
    # the dims it reached.
    inference = SymbolicShapeInference(int_max=2**31 - 1, auto_merge=True, guess_output_rank=False, verbose=0)
    try:
        inference._preprocess(proto)
        while inference.run_:
            inference._infer_impl()
    except _INFERENCE_ERRORS as e:
        logger.info("canonicalize-attn: ONNX Runtime's symbolic shape inference stopped (%s: %s)",
                    type(e).__name__, e)
    return {name: typed for name, vi in inference.known_vi_.items() if (typed := _typed(vi.type)) is not None}


def name_dims(model: ir.Model) -> bool:
    """Give the main graph's values ORT's symbolically named shapes (and element types
    where they had none); True when any changed."""
    # A large model (or one with external weights) is not copied into one protobuf.
    if is_large(model):
        logger.info("canonicalize-attn: model too large for symbolic shape inference; skipped")
        return False
    shapes = _inferred(model)
    if not shapes:
        return False
    changed = False
    for node in model.graph:
        for value in node.outputs:
            typed = shapes.get(value.name)
            if typed is None:
                continue
            shape, dtype = typed
            if shape != value.shape:
                value.shape = shape
                changed = True
            if value.dtype is None and dtype != ir.DataType.UNDEFINED:
                value.dtype = dtype
                changed = True
    return changed
