"""MixDQ's BOS handling: token 0 of a text-conditioned GEMM input, when it is prompt-invariant.

CLIP-style text encoders put the same BOS embedding at token 0 of every prompt, with
outlier magnitudes that wreck a shared int8 scale; MixDQ keeps it out of the
quantizer. When token 0 really is the same for every prompt, its projection
``row @ W`` is a constant: ``quant`` writes that constant instead of keeping an fp32
copy of W. ``calibrate`` measures whether it is (``token0_stats``); T5-style encoders,
whose token 0 is an ordinary word, fail the check and ``bos`` is refused there.

Invariant: a token-0 row is used as a constant only when every calibration sample's
token 0 lies within ``MAX_SPREAD`` (relative L2) of the recorded mean row.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from genzip.errors import GenzipError

MAX_SPREAD = 1e-3
_BOS_SUFFIX = "#bos"


def range_key(tensor: str, bos: bool) -> str:
    """The key of an activation range: a ``bos`` layer's input range ignores token 0, so
    it is kept apart from the same tensor's full range."""
    return tensor + _BOS_SUFFIX if bos else tensor


def key_tensor(key: str) -> str:
    """The tensor a ``range_key`` measures."""
    return key.removesuffix(_BOS_SUFFIX)


def ranged_values(key: str, x: np.ndarray) -> np.ndarray:
    """What the range ``key`` covers of its tensor ``x``: tokens 1: (axis -2) for a bos key."""
    return x[..., 1:, :] if key.endswith(_BOS_SUFFIX) and x.ndim >= 2 else x


def token0_stats(rows: list[np.ndarray]) -> dict[str, Any]:
    """``bos_row`` (mean token-0 row, float32 base64) and ``bos_spread`` (largest relative
    L2 distance of a sample's row from the mean) of token-0 rows ``[n, K]``."""
    stacked = np.concatenate(rows).astype(np.float64)
    mean = stacked.mean(axis=0)
    spread = float(np.linalg.norm(stacked - mean, axis=1).max() / max(float(np.linalg.norm(mean)), 1e-12))
    return {"bos_row": base64.b64encode(mean.astype(np.float32).tobytes()).decode(), "bos_spread": spread}


def invariant_row(calib: dict[str, Any] | None, where: str) -> np.ndarray:
    """The recorded token-0 row of a ``bos`` node; refuses a missing or prompt-dependent one."""
    if calib is None or "bos_row" not in calib:
        raise GenzipError(f"{where} is annotated bos=true but calibrate did not observe its token 0",
                          "put calibrate before quant (it checks that token 0 is the same for every prompt)")
    spread = float(calib["bos_spread"])
    if spread > MAX_SPREAD:
        raise GenzipError(
            f"{where}: token 0 differs across the calibration prompts (relative spread {spread:.3g} > "
            f"{MAX_SPREAD:g}), so it is no prompt-invariant BOS (CLIP's) and MixDQ's BOS handling does not apply",
            "drop bos=true for this model (T5-style encoders have no fixed first token)")
    return np.frombuffer(base64.b64decode(calib["bos_row"]), dtype=np.float32)
