"""Scale arithmetic for the quantization passes (numpy only, no graph code).

Every scale is floored at ``SCALE_FLOOR`` so an all-zero channel, block or
activation gives a finite, positive scale (a zero scale would make ONNX
QuantizeLinear divide by zero and emit NaN/inf).
"""

from __future__ import annotations

import numpy as np

SCALE_FLOOR = 1e-8
INT8_MAX = 127.0
INT4_MAX = 7.0
FP8_E4M3_MAX = 448.0
# Values kept per tensor per sample for percentile/mse range search.
RESERVOIR = 1 << 16


def qmax(dtype: str) -> float:
    return {"int8": INT8_MAX, "int4": INT4_MAX, "float8e4m3fn": FP8_E4M3_MAX}[dtype]


def floor_scale(scale: np.ndarray) -> np.ndarray:
    scale = np.asarray(scale, dtype=np.float32)
    return np.where(np.isfinite(scale) & (scale > SCALE_FLOOR), scale, np.float32(SCALE_FLOOR)).astype(np.float32)


def per_channel_scale(w: np.ndarray, axis: int, dtype: str) -> np.ndarray:
    """Symmetric scale per slice along ``axis`` (1-D, length w.shape[axis])."""
    reduce = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.max(np.abs(w), axis=reduce) if reduce else np.abs(w)
    return floor_scale(amax / qmax(dtype))


def int4_channel_scale(w: np.ndarray, axis: int) -> np.ndarray:
    """Per-channel int4 scale (slices along ``axis``) with the round-trip-MSE clip search
    of int4 blocks: at 16 levels absmax scaling wastes most of them on rare large weights."""
    scale = per_channel_scale(w, axis, "int4")
    moved = np.moveaxis(w, axis, -1).reshape(1, -1, w.shape[axis])  # one "block" per channel
    return _search_clip(moved, scale[None, :], INT4_MAX)[0]


def expand(scale: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    shape = [1] * ndim
    shape[axis] = -1
    return scale.reshape(shape)


def quantize_int(w: np.ndarray, scale: np.ndarray, bits: int) -> np.ndarray:
    """Round-half-to-even like ONNX QuantizeLinear. int8 saturates to the symmetric
    [-127, 127]; int4 uses all 16 levels [-8, 7] (zero point stays 0)."""
    limit = 2 ** (bits - 1) - 1
    q = np.clip(np.rint(w / scale), -limit - (bits == 4), limit)
    return q.astype(np.int8)


def block_scale(w: np.ndarray, axis: int, block: int, dtype: str) -> np.ndarray:
    """Scales of ``DequantizeLinear(block_size=block, axis=axis)``: w.shape with
    dim ``axis`` replaced by ceil(dim / block). The weight is zero-padded to a
    whole number of blocks for the reduction only."""
    k = w.shape[axis]
    nblocks = -(-k // block)
    pad = [(0, 0)] * w.ndim
    pad[axis] = (0, nblocks * block - k)
    padded = np.pad(np.abs(w), pad)
    moved = np.moveaxis(padded, axis, 0).reshape(nblocks, block, *np.moveaxis(padded, axis, 0).shape[1:])
    amax = moved.max(axis=1)
    scale = floor_scale(amax / qmax(dtype))
    if dtype == "int4":
        scale = _search_clip(np.moveaxis(np.pad(w, pad), axis, 0).reshape(moved.shape), scale, qmax(dtype))
    return np.moveaxis(scale, 0, axis)


def _search_clip(blocks: np.ndarray, scale: np.ndarray, limit: float) -> np.ndarray:
    """Per block, the scale (absmax/limit times 0.6 .. 1.2) with the lowest round-trip MSE
    over the full signed range [-limit-1, limit] (int4: all 16 levels, zero point 0)."""
    best, best_err = scale, np.full(scale.shape, np.inf, np.float32)
    for ratio in np.linspace(0.6, 1.2, 25):
        s = floor_scale(scale * ratio)
        q = np.clip(np.rint(blocks / s[:, None]), -limit - 1, limit) * s[:, None]
        err = ((q - blocks) ** 2).sum(axis=1)
        better = err < best_err
        best = np.where(better, s, best)
        best_err = np.where(better, err, best_err)
    return best.astype(np.float32)


def repeat_blocks(scale: np.ndarray, axis: int, block: int, k: int) -> np.ndarray:
    return np.repeat(scale, block, axis=axis).take(np.arange(k), axis=axis)


def activation_amax(method: str, amax: float, values: np.ndarray, percentile: float) -> float:
    """Clipping range of one activation from its observed max and a sample of |x|."""
    if values.size == 0 or method == "absmax":
        return float(amax)
    if method == "percentile":
        return float(min(amax, np.percentile(values, percentile)))
    # mse: the clip that minimises the int8 round-trip error over the sample.
    best, best_err = float(amax), np.inf
    for ratio in np.linspace(0.3, 1.0, 36):
        clip = max(float(amax) * ratio, SCALE_FLOOR)
        scale = clip / INT8_MAX
        err = float(np.mean((np.clip(np.rint(values / scale), -127, 127) * scale - values) ** 2))
        if err < best_err:
            best, best_err = clip, err
    return best


def sample_abs(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    flat = np.abs(x.reshape(-1)).astype(np.float32)
    if flat.size <= RESERVOIR:
        return flat
    return flat[rng.integers(0, flat.size, RESERVOIR)]
