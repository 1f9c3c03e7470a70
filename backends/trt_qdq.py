"""TensorRT explicit-quantization rules for ONNX QuantizeLinear/DequantizeLinear.

From TensorRT's "Working with Quantized Types" guide and the IQuantizeLayer /
IDequantizeLayer contracts (see ``trt_support`` for the sources):

* quantization is symmetric: a zero point, when given, must be a constant of zeros;
* quantized types are INT8, FP8 (E4M3), INT4 and FP4 (E2M1); FP8 needs compute
  capability 8.9+, FP4 10.0+ (and TensorRT 10.8+); INT4 is weight-only;
* activations are quantized per tensor; per-channel scales are for weights and run
  along the output-channel axis of the consuming layer (Conv: 0, ConvTranspose: 1,
  MatMul weight ``[K, N]``: last, Gemm: 0 with ``transB`` else 1);
* block quantization (``block_size`` > 0) is for weights only.

"Weight side" means the quantized tensor is a build-time constant: the Q/DQ input
is an initializer or Constant, or a DQ reads a Q whose input is one (high-precision
weights that TensorRT quantizes at build time).

Invariant: rules only read the model; an unknown dtype or shape skips the rule
that needs it rather than guessing.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from genzip.passes.lowering import _trt_support as sup
from genzip.passes.lowering._trt_rules import Finding, attn_graphs, int_attr, is_const, node_label

_QDQ = ("QuantizeLinear", "DequantizeLinear")
_SYMMETRIC_FIX = "re-quantize symmetrically (zero point 0, scale = max|x| / qmax)"


def _const_array(value: ir.Value | None) -> np.ndarray | None:
    if value is None:
        return None
    if value.const_value is not None:
        return value.const_value.numpy()
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and "value" in producer.attributes:
        return producer.attributes["value"].as_tensor().numpy()
    return None


def _weight_side(node: ir.Node) -> bool:
    x = node.inputs[0]
    if is_const(x):
        return True
    producer = x.producer() if x is not None else None
    return node.op_type == "DequantizeLinear" and producer is not None and \
        producer.op_type == "QuantizeLinear" and is_const(producer.inputs[0])


def _quant_dtype(node: ir.Node) -> ir.DataType | None:
    if node.op_type == "DequantizeLinear":
        return node.inputs[0].dtype
    zero_point = node.inputs[2] if len(node.inputs) > 2 else None
    if node.outputs[0].dtype is not None:
        return node.outputs[0].dtype
    if zero_point is not None and zero_point.dtype is not None:
        return zero_point.dtype
    output_dtype = int_attr(node, "output_dtype", 0)
    return ir.DataType(output_dtype) if output_dtype else None


def _expected_axis(node: ir.Node) -> tuple[int, ir.Node] | None:
    """Output-channel axis of the layer consuming this weight's DQ, with that layer."""
    dq = node
    if node.op_type == "QuantizeLinear":
        users = node.outputs[0].uses()
        if len(users) != 1 or users[0].node.op_type != "DequantizeLinear":
            return None
        dq = users[0].node
    users = dq.outputs[0].uses()
    if len(users) != 1:
        return None
    consumer, index = users[0].node, users[0].idx
    rank = len(node.inputs[0].shape) if node.inputs[0].shape is not None else None
    if index != 1 or rank is None:
        return None
    axis = {"Conv": 0, "ConvTranspose": 1, "MatMul": rank - 1,
            "Gemm": 0 if int_attr(consumer, "transB", 0) else 1}.get(consumer.op_type)
    return None if axis is None else (axis, consumer)


def _dtype_finding(node: ir.Node, qt: ir.DataType, version: sup.Version, cc: tuple[int, int]) -> Finding | None:
    label, op = node_label(node), node.op_type
    if qt == ir.DataType.INT8:
        return None
    if qt == ir.DataType.FLOAT8E4M3FN:
        if cc < sup.FP8_MIN_CC:
            return Finding(label, op, "qdq-fp8-arch",
                           f"FP8 needs compute capability >= 8.9, target is {cc[0]}.{cc[1]}",
                           "build for an Ada/Hopper-or-newer GPU (--compute-capability 8.9 or higher) "
                           "or quantize to int8")
        return None
    if qt == ir.DataType.FLOAT4E2M1:
        if cc < sup.FP4_MIN_CC or version < sup.FP4_FROM:
            return Finding(label, op, "qdq-fp4-arch", "FP4 needs TensorRT >= 10.8 and compute capability >= 10.0",
                           "build for a Blackwell GPU with TensorRT >= 10.8, or quantize to fp8/int8")
        return None
    if qt == ir.DataType.INT4:
        if not _weight_side(node):
            return Finding(label, op, "qdq-int4", "INT4 quantization of an activation; TensorRT INT4 is weight-only",
                           "quantize activations to int8 or fp8, or leave them unquantized")
        return None
    return Finding(label, op, "qdq-dtype", f"quantized type {qt.name} is not a TensorRT quantized type",
                   f"use int8 (or fp8 e4m3 / int4 weights); {_SYMMETRIC_FIX}")


def _node_findings(node: ir.Node, version: sup.Version, cc: tuple[int, int]) -> list[Finding]:
    label, op = node_label(node), node.op_type
    found = []
    qt = _quant_dtype(node)
    if qt is not None:
        f = _dtype_finding(node, qt, version, cc)
        if f:
            found.append(f)
    zero_point = node.inputs[2] if len(node.inputs) > 2 else None
    if zero_point is not None:
        zp = _const_array(zero_point)
        if zp is None:
            found.append(Finding(label, op, "qdq-zero-point", "the zero point is not a constant", _SYMMETRIC_FIX))
        elif np.any(np.asarray(zp).astype(np.float32) != 0):
            found.append(Finding(label, op, "qdq-zero-point",
                                 "the zero point is not 0 (TensorRT quantization is symmetric)", _SYMMETRIC_FIX))
    weight = _weight_side(node)
    if int_attr(node, "block_size", 0) > 0:
        if not weight:
            found.append(Finding(label, op, "qdq-block", "block quantization of an activation",
                                 "block-quantize only weights (a constant initializer input); quantize "
                                 "activations per tensor"))
        return found
    scale_shape = node.inputs[1].shape if len(node.inputs) > 1 and node.inputs[1] is not None else None
    if scale_shape is None or len(scale_shape) != 1 or scale_shape[0] == 1:
        return found  # per-tensor (or unknown)
    if not weight:
        found.append(Finding(label, op, "qdq-activation-scale", "per-channel scale on an activation",
                             "use a per-tensor (scalar) scale for activations"))
        return found
    expected = _expected_axis(node)
    if expected is not None:
        want, consumer = expected
        rank = len(node.inputs[0].shape)
        axis = int_attr(node, "axis", 1) % rank
        if axis != want:
            found.append(Finding(label, op, "qdq-weight-axis",
                                 f"per-channel axis {axis} is not the output-channel axis {want} of "
                                 f"{consumer.op_type} '{node_label(consumer)}'",
                                 f"quantize the weight per output channel (axis={want}) or per tensor"))
    return found


def qdq_findings(model: ir.Model, version: sup.Version, cc: tuple[int, int]) -> list[Finding]:
    found = []
    for graph in attn_graphs(model, version):
        for node in graph:
            if node.op_type in _QDQ and node.domain in ("", "ai.onnx"):
                found.extend(_node_findings(node, version, cc))
    return found
