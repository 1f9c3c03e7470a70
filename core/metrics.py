"""Numeric comparison of two tensors and the fidelity gate, shared by every layer.

Both helpers flatten their inputs and compute in float64, so they accept any
array-like of the same number of elements (NumPy arrays, ORT outputs, CPU torch
tensors converted with ``.numpy()``).
"""

from __future__ import annotations

import math

import numpy as np

# An export or pass pipeline below this cosine vs its reference is broken, not lossy
# (the default of --min-cosine; lossy passes are given a lower gate by the user).
MIN_COSINE = 0.99
# The ONNX export itself must match eager PyTorch this closely (frontend.verify).
EXPORT_MIN_COSINE = 0.999
# An ORT-optimized graph must compute what its model computes (fusions reorder sums).
OPTIMIZED_MIN_COSINE = 0.99999


def _flat64(a, b) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(a).astype(np.float64, copy=False).ravel()
    y = np.asarray(b).astype(np.float64, copy=False).ravel()
    if x.size != y.size:
        raise ValueError(f"cannot compare arrays of {x.size} and {y.size} elements")
    return x, y


def cosine(a, b) -> float:
    """Cosine similarity of the flattened arrays.

    Two all-zero arrays are identical (1.0); one all-zero array against a non-zero
    one is 0.0; any NaN/inf makes the result NaN so threshold checks fail.
    """
    x, y = _flat64(a, b)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return math.nan
    nx, ny = float(np.linalg.norm(x)), float(np.linalg.norm(y))
    if nx == 0.0 or ny == 0.0:
        return 1.0 if nx == ny else 0.0
    return float(np.clip(np.dot(x, y) / (nx * ny), -1.0, 1.0))


def max_abs_err(a, b) -> float:
    """Largest absolute elementwise difference (0.0 for empty arrays; NaN if any is NaN)."""
    x, y = _flat64(a, b)
    if x.size == 0:
        return 0.0
    return float(np.max(np.abs(x - y)))


def is_faithful(cos: float, threshold: float) -> bool:
    """True when ``cos`` is a finite number at or above ``threshold``."""
    return math.isfinite(cos) and cos >= threshold


def measure_fidelity(reference: dict, outputs: dict, label: str) -> dict:
    """Cosine and max abs error of the first output (the model's main result) vs the reference."""
    ref_name = next(iter(reference))
    out = outputs.get(ref_name)
    if out is None:
        out = next(iter(outputs.values()))
    return {
        "reference": label,
        "output": ref_name,
        "cosine": float(cosine(reference[ref_name], out)),
        "max_abs_err": float(max_abs_err(reference[ref_name], out)),
    }
