"""Graph builders for ``quant``: Q/DQ pairs, quantized weight initializers, the
per-token dynamic int8 GEMM and the BOS split. One :class:`Builder` per rewritten
node collects the new nodes, which are inserted before that node.

Forms (TensorRT explicit-quantization rules: Q/DQ sit on the GEMM's inputs, the
weight is a quantized initializer behind a DequantizeLinear, zero points are 0):

* static:  ``x -> Q(s_a, 0) -> DQ(s_a, 0) -> GEMM <- DQ(axis=out) <- W_q`` (fp8: the
  activation Q has no zero point, ``output_dtype`` instead);
* per-block weight only (w4a16): ``GEMM <- DQ(axis=K, block_size=B) <- W_int4``;
* dynamic per-token (ORT CPU int8 GEMM, not TensorRT): ``a = max(|x|, -1)``,
  ``x_u8 = QuantizeLinear(x * 127/a, 1, 128)``, then
  ``com.microsoft.MatMulIntegerToFloat(x_u8, W_s8, 1, w_scale/127, 128) * a`` (or the
  standard ``MatMulInteger -> Cast -> * (w_scale/127) -> * a``). The +128 shift keeps
  one scalar zero point (MLAS's fast u8s8 kernel) while each row keeps its own
  symmetric scale.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx_ir as ir

from genzip.ir_build import NodeBuilder
from genzip.passes.quant import _scales as qs
from genzip.passes.quant._spec import TensorSpec

_NP = {"int8": np.int8, "int4": ml_dtypes.int4, "float8e4m3fn": ml_dtypes.float8_e4m3fn, "uint8": np.uint8}
INT64_MAX = np.iinfo(np.int64).max


class Builder(NodeBuilder):
    """Nodes ``<prefix>.<Op>_<i>`` (outputs named when the graph takes them); constants
    are initializers of ``graph`` (``initializer``), so ORT can fold them into int8 GEMMs."""

    def __init__(self, graph: ir.Graph, prefix: str):
        super().__init__(prefix)
        self.graph = graph

    def initializer(self, suffix: str, array: np.ndarray) -> ir.Value:
        name, i = f"{self.prefix}.{suffix}", 0
        while name in self.graph.initializers:
            i += 1
            name = f"{self.prefix}.{suffix}.{i}"
        value = ir.Value(name=name, const_value=ir.tensor(array, name=name))
        self.graph.register_initializer(value)
        return value

    def _node_name(self, op_type: str) -> str:
        return f"{self.prefix}.{op_type}_{len(self.nodes)}"

    def _output_names(self, op_type: str, n: int) -> list[str | None]:
        return [None] * n

    def zero(self, dtype: str, shape=()) -> ir.Value:
        return self.initializer(f"zp_{dtype}", np.zeros(shape, dtype=_NP[dtype]))

    def quantize(self, x: ir.Value, amax: float, dtype: str) -> tuple[ir.Value, ir.Value, ir.Value | None]:
        """(q, scale, zero point) of a static per-tensor activation quantizer."""
        scale = self.initializer("act_scale", np.array(qs.floor_scale(amax / qs.qmax(dtype)), np.float32))
        if dtype == "float8e4m3fn":
            # No zero point (output_dtype instead): ORT 1.32's ReluQuantFusion reads a float8
            # zero point as uint8 0 == qmin and drops a Relu feeding the Q, keeping negatives.
            return self.op("QuantizeLinear", x, scale, output_dtype=ir.DataType.FLOAT8E4M3FN), scale, None
        zp = self.zero(dtype)
        return self.op("QuantizeLinear", x, scale, zp), scale, zp

    def dequantize(self, q: tuple[ir.Value, ir.Value, ir.Value | None]) -> ir.Value:
        return self.op("DequantizeLinear", *(v for v in q if v is not None))

    def qdq(self, x: ir.Value, amax: float, dtype: str) -> ir.Value:
        return self.dequantize(self.quantize(x, amax, dtype))

    def weight_dq(self, w: np.ndarray, spec: TensorSpec) -> ir.Value:
        """Quantized initializer + DequantizeLinear for a per-channel or per-block weight."""
        if spec.granularity == "per-block":
            scale = qs.block_scale(w, spec.axis, spec.block_size, spec.dtype)
            full = qs.repeat_blocks(scale, spec.axis, spec.block_size, w.shape[spec.axis])
            q = qs.quantize_int(w, full, 4).astype(ml_dtypes.int4)
            attrs = {"axis": spec.axis, "block_size": spec.block_size}
            return self.op("DequantizeLinear", self.initializer("weight_q", q), self.initializer("weight_scale", scale), **attrs)
        scale = qs.per_channel_scale(w, spec.axis, spec.dtype)
        full = qs.expand(scale, w.ndim, spec.axis)
        if spec.dtype == "float8e4m3fn":
            q = np.clip(w / full, -qs.FP8_E4M3_MAX, qs.FP8_E4M3_MAX).astype(ml_dtypes.float8_e4m3fn)
        else:
            q = qs.quantize_int(w, full, 8)
        inputs = [self.initializer("weight_q", q), self.initializer("weight_scale", scale), self.zero(spec.dtype, scale.shape)]
        return self.op("DequantizeLinear", *inputs, axis=spec.axis)

    def quantize_tokens(self, x: ir.Value) -> tuple[ir.Value, ir.Value, ir.Value]:
        """(x_u8, row amax, zero point 128): symmetric per-row int8 shifted into uint8."""
        axes = self.initializer("axes", np.array([-1], np.int64))
        amax = self.op("ReduceMax", self.op("Abs", x), axes, keepdims=1)
        amax = self.op("Max", amax, self.initializer("floor", np.array(qs.SCALE_FLOOR * qs.INT8_MAX, np.float32)))
        inv = self.op("Div", self.initializer("qmax", np.array(qs.INT8_MAX, np.float32)), amax)
        shift = self.initializer("zp_shift", np.array(128, np.uint8))
        x_u8 = self.op("QuantizeLinear", self.op("Mul", x, inv), self.initializer("one", np.array(1.0, np.float32)), shift)
        return x_u8, amax, shift

    def token_gemm(self, tokens: tuple[ir.Value, ir.Value, ir.Value], w_kn: np.ndarray, fused: bool,
                   w_dtype: str = "int8") -> ir.Value:
        """Per-token int8 activation x per-output-channel int8 or int4 W ([K, N]), float32 out.
        ``fused``: com.microsoft MatMulIntegerToFloat (scales applied in the MLAS GEMM
        epilogue) instead of standard MatMulInteger -> Cast -> Mul. An int4 weight is
        stored as int4 (half the bytes) and widened by a ``Cast`` to int8, which ORT
        folds into the int8 GEMM's constant weight (ORT CPU has no int4 x int8 GEMM)."""
        q, scale = token_weight(w_kn, w_dtype)
        w_q = self.initializer("weight_q4" if w_dtype == "int4" else "weight_q", q)
        if w_dtype == "int4":
            w_q = self.op("Cast", w_q, to=ir.DataType.INT8)
        return self._token_gemm(tokens, w_q, self.initializer("weight_scale", scale), fused)

    def token_gemm_ranged(self, tokens: tuple[ir.Value, ir.Value, ir.Value], stack_kn: np.ndarray, index: ir.Value,
                          fused: bool, w_dtype: str = "int8") -> ir.Value:
        """``token_gemm`` with the weight slice ``index`` of ``stack_kn`` [ranges, K, N] (``_ranges``),
        every slice quantized with its own scales. The weight is stored unsigned with a zero point
        (int8 + 128 as uint8; int4 + 8 as uint4, widened to uint8 by a Cast ORT folds): a weight
        that is not a constant takes MLAS's u8s8 kernel, whose int16 pair sums saturate on AVX2
        (measured: off by up to 6e4 on random 256-deep rows), while u8u8 is exact."""
        q, scale = zip(*(token_weight(w, w_dtype) for w in stack_kn))
        zp = 8 if w_dtype == "int4" else 128
        shifted = np.stack(q).astype(np.int16) + zp
        if w_dtype == "int4":
            w_q = self.op("Cast", self.initializer("weight_u4", shifted.astype(ml_dtypes.uint4)), to=ir.DataType.UINT8)
        else:
            w_q = self.initializer("weight_u8", shifted.astype(np.uint8))
        w_q = self.op("Gather", w_q, index, axis=0)
        w_scale = self.op("Gather", self.initializer("weight_scale", np.stack(scale)), index, axis=0)
        return self._token_gemm(tokens, w_q, w_scale, fused, self.initializer("weight_zp", np.array(zp, np.uint8)))

    def _token_gemm(self, tokens: tuple[ir.Value, ir.Value, ir.Value], w_q: ir.Value, w_scale: ir.Value,
                    fused: bool, w_zero: ir.Value | None = None) -> ir.Value:
        x_u8, amax, shift = tokens
        zero = [] if w_zero is None else [w_zero]
        if fused:
            one = self.initializer("one_scale", np.array(1.0, np.float32))
            y = self.op("MatMulIntegerToFloat", x_u8, w_q, one, w_scale, shift, *zero, _domain="com.microsoft")
        else:
            y = self.op("Cast", self.op("MatMulInteger", x_u8, w_q, shift, *zero), to=ir.DataType.FLOAT)
            y = self.op("Mul", y, w_scale)
        return self.op("Mul", y, amax)

    def weight_dq_ranged(self, stack: np.ndarray, index: ir.Value, spec: TensorSpec) -> ir.Value:
        """``weight_dq`` for a per-channel int8 weight chosen per timestep range: every slice of
        ``stack`` [ranges, ...] keeps its own per-channel scales; slice ``index`` is dequantized.
        Stored as uint8 with zero point 128 (exact, the same grid): ORT fuses a non-constant int8
        weight into MLAS's saturating u8s8 kernel (see ``token_gemm_ranged``)."""
        scales = [qs.per_channel_scale(w, spec.axis, spec.dtype) for w in stack]
        q = np.stack([qs.quantize_int(w, qs.expand(s, w.ndim, spec.axis), 8) for w, s in zip(stack, scales)])
        w_q = self.op("Gather", self.initializer("weight_u8", (q.astype(np.int16) + 128).astype(np.uint8)), index, axis=0)
        scale = self.op("Gather", self.initializer("weight_scale", np.stack(scales)), index, axis=0)
        zero = self.initializer("weight_zp", np.full(scales[0].shape, 128, np.uint8))
        return self.op("DequantizeLinear", w_q, scale, zero, axis=spec.axis)

    def after_first_token(self, x: ir.Value) -> ir.Value:
        """Tokens 1: along axis -2."""
        return self._tokens(x, 1, INT64_MAX)

    def first_token(self, x: ir.Value) -> ir.Value:
        """Token 0 along axis -2 (kept as an axis of length 1)."""
        return self._tokens(x, 0, 1)

    def _tokens(self, x: ir.Value, start: int, end: int) -> ir.Value:
        axes = self.initializer("bos_axes", np.array([-2], np.int64))
        first = self.initializer(f"bos_{start}", np.array([start], np.int64))
        last = self.initializer("bos_end" if end == INT64_MAX else f"bos_{end}", np.array([end], np.int64))
        return self.op("Slice", x, first, last, axes)

    def bos_output(self, rest_y: ir.Value, row_out: np.ndarray) -> ir.Value:
        """The constant token-0 output ``row_out`` [N], broadcast to rest_y's shape with one token."""
        lead = self.op("Shape", rest_y, end=-2)
        shape = self.op("Concat", lead, self.initializer("bos_tail", np.array([1, row_out.shape[-1]], np.int64)), axis=0)
        return self.op("Expand", self.initializer("bos_out", row_out.reshape(1, -1).astype(np.float32)), shape)

    def concat_tokens(self, first: ir.Value, rest: ir.Value) -> ir.Value:
        return self.op("Concat", first, rest, axis=-2)


def token_weight(w_kn: np.ndarray, w_dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """(quantized [K, N] weight, per-column scale / 127) of the per-token GEMM."""
    scale = qs.int4_channel_scale(w_kn, 1) if w_dtype == "int4" else qs.per_channel_scale(w_kn, 1, w_dtype)
    if w_dtype == "int4":
        q = qs.quantize_int(w_kn, scale[None, :], 4).astype(ml_dtypes.int4)
    else:
        q = qs.quantize_int(w_kn, scale[None, :], 8)
    return q, (scale / qs.INT8_MAX).astype(np.float32)


def reroute(graph: ir.Graph, old: ir.Value, new: ir.Value) -> None:
    """Every consumer of ``old`` reads ``new``; a graph output keeps its name."""
    is_output = old in graph.outputs
    ir.convenience.replace_all_uses_with(old, new, replace_graph_outputs=True)
    if is_output:
        name = old.name
        old.name = f"{name}.pre_quant"
        new.name = name
        # A graph output must be typed; the replacement computes the same tensor.
        if new.type is None:
            new.type = old.type
        if new.shape is None:
            new.shape = old.shape


def drop_if_unused(graph: ir.Graph, value: ir.Value) -> None:
    if value.is_initializer() and not value.uses() and value not in graph.outputs:
        graph.initializers.pop(value.name, None)
