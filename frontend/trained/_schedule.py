"""What the diffusion trainers share: their command line, reproducible torch settings, the
learning-rate schedule (linear warmup, then cosine down to a tenth of the peak) and one
optimizer step with its EMA update."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

WARMUP = 50


def trainer_parser(doc: str, steps: int) -> argparse.ArgumentParser:
    """``--out DIR --steps N --batch 32 --seed 0``, described by ``doc``'s first line."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def reproducible() -> None:
    """One thread and deterministic kernels: the same seed on the same versions writes the same weights."""
    import torch

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


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
