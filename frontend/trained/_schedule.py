"""The learning-rate schedule both trainers use: linear warmup, then cosine down to a tenth of the peak."""

from __future__ import annotations

import math

WARMUP = 50


def warmup_cosine(step: int, steps: int, peak: float) -> float:
    if step < WARMUP:
        return peak * (step + 1) / WARMUP
    progress = (step - WARMUP) / max(1, steps - WARMUP)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
