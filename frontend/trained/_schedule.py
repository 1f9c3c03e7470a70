"""What the diffusion trainers share: the learning-rate schedule (linear warmup, then cosine down to
a tenth of the peak) and one optimizer step with its EMA update."""

from __future__ import annotations

import math

WARMUP = 50


def warmup_cosine(step: int, steps: int, peak: float) -> float:
    if step < WARMUP:
        return peak * (step + 1) / WARMUP
    progress = (step - WARMUP) / max(1, steps - WARMUP)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def ema_step(model, ema, opt, loss, step: int) -> float:
    """One step of ``opt`` on ``loss`` (gradients clipped to norm 1), then ``ema`` moves toward
    ``model`` with decay ``min(0.995, (1 + step) / (10 + step))`` (a short warm-up); returns the loss."""
    import torch

    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    decay = min(0.995, (1 + step) / (10 + step))
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p, 1 - decay)
    return loss.item()
