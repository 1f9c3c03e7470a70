"""Candidate precision formats of mixed-precision allocation and their numerics.

Each format names the ``annotate-precision`` scheme that realises it (``fp16`` has
none: the layer is kept unquantized, fp32 in an ORT artifact and fp16 under
TensorRT ``--precision fp16``), its nominal weight and activation bits (what the
budget counts) and how to simulate it numerically. The simulation is the same
arithmetic ``quant`` inserts (``quant_qdq.Builder.weight_dq`` and the static
activation Q/DQ with the absmax range ``calibrate`` records), so a sensitivity
measured here is the error of the real quantized layer.
"""

from __future__ import annotations

import dataclasses

import ml_dtypes
import numpy as np

from genzip.passes.quant import _scales as qs


@dataclasses.dataclass(frozen=True)
class Format:
    name: str
    scheme: str | None  # annotate-precision scheme; None = kept unquantized
    weight_bits: int
    act_bits: int
    act_dtype: str | None  # fake activation quantizer: int8, int8-token (per token, dynamic), float8e4m3fn, fp16, or None


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("w8a8", "w8a8", 8, 8, "int8"),
        Format("w4a16", "w4a16", 4, 16, None),
        Format("w4a8", "w4a8", 4, 8, "int8"),
        Format("w8a8-dynamic", "w8a8-dynamic", 8, 8, "int8-token"),
        Format("w4a8-dynamic", "w4a8-dynamic", 4, 8, "int8-token"),
        Format("fp8", "fp8", 8, 8, "float8e4m3fn"),
        Format("fp16", None, 16, 16, "fp16"),
    )
}
# Per-block int4 weights, MatMul/Gemm only (as in annotate-precision).
GEMM_ONLY = ("w4a16", "w4a8")
# Per-token dynamic activations (ViDiT-Q), MatMul/Gemm only; per-channel weights.
DYNAMIC = ("w8a8-dynamic", "w4a8-dynamic")


def fake_weight(w: np.ndarray, op: str, trans_b: bool, fmt: str, block: int = 32) -> np.ndarray:
    """``DQ(Q(w))`` for ``fmt``: exactly the dequantized initializer ``quant`` writes."""
    if fmt == "fp16":
        return w.astype(np.float16).astype(np.float32)
    out_axis, red_axis = _axes(op, trans_b)
    if fmt in GEMM_ONLY:
        scale = qs.block_scale(w, red_axis, block, "int4")
        full = qs.repeat_blocks(scale, red_axis, block, w.shape[red_axis])
        return (qs.quantize_int(w, full, 4).astype(np.float32) * full).astype(np.float32)
    dtype = {"fp8": "float8e4m3fn", "w4a8-dynamic": "int4"}.get(fmt, "int8")
    scale = qs.int4_channel_scale(w, out_axis) if dtype == "int4" else qs.per_channel_scale(w, out_axis, dtype)
    full = qs.expand(scale, w.ndim, out_axis)
    if dtype == "float8e4m3fn":
        q = np.clip(w / full, -qs.FP8_E4M3_MAX, qs.FP8_E4M3_MAX).astype(ml_dtypes.float8_e4m3fn)
        return (q.astype(np.float32) * full).astype(np.float32)
    bits = 4 if dtype == "int4" else 8
    return (qs.quantize_int(w, full, bits).astype(np.float32) * full).astype(np.float32)


def _axes(op: str, trans_b: bool) -> tuple[int, int]:
    """(output-channel axis, reduction axis), as ``quant_spec.weight_axes``."""
    if op == "MatMul":
        return 1, 0
    if op == "Gemm":
        return (0, 1) if trans_b else (1, 0)
    return 0, 1  # Conv [O, I, kh, kw]


def bits_of(fmt: str) -> tuple[int, int]:
    f = FORMATS[fmt]
    return f.weight_bits, f.act_bits
