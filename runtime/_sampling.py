"""Next-token choice from logits: greedy, or temperature / top-k / top-p sampling.

Invariant: ``do_sample=False`` is exactly ``argmax`` (ties to the lowest id, as
``torch.argmax`` in transformers' greedy search), so FP32 greedy output can match
transformers token for token. Sampling draws from one ``numpy`` Generator seeded
once per ``generate`` call, so a seed fixes the whole sequence.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from genzip.errors import GenzipError


@dataclasses.dataclass(frozen=True)
class Sampling:
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k cut
    top_p: float = 1.0  # 1.0: no nucleus cut

    def check(self) -> None:
        if self.do_sample and not self.temperature > 0:
            raise GenzipError(f"temperature {self.temperature} must be > 0 when sampling", "pass e.g. temperature=0.7")
        if self.top_k < 0:
            raise GenzipError(f"top_k {self.top_k} is negative", "pass 0 (off) or a positive k")
        if not 0.0 < self.top_p <= 1.0:
            raise GenzipError(f"top_p {self.top_p} is outside (0, 1]", "pass e.g. top_p=0.9, or 1.0 (off)")


def _filtered(logits: np.ndarray, s: Sampling) -> np.ndarray:
    x = logits.astype(np.float64) / s.temperature
    if s.top_k and s.top_k < x.shape[-1]:
        kth = np.partition(x, -s.top_k, axis=-1)[:, -s.top_k][:, None]
        x = np.where(x < kth, -np.inf, x)
    if s.top_p < 1.0:
        order = np.argsort(-x, axis=-1)
        sorted_x = np.take_along_axis(x, order, axis=-1)
        probs = np.exp(sorted_x - sorted_x[:, :1])
        probs /= probs.sum(-1, keepdims=True)
        # Drop a token once the mass before it already reaches top_p (the top one always stays).
        drop_sorted = (np.cumsum(probs, -1) - probs) >= s.top_p
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, axis=-1)
        x = np.where(drop, -np.inf, x)
    return x


def next_tokens(logits: np.ndarray, s: Sampling, rng: np.random.Generator) -> np.ndarray:
    """``[batch, vocab]`` logits -> ``[batch]`` int64 token ids."""
    if not s.do_sample:
        return logits.argmax(-1).astype(np.int64)
    x = _filtered(logits, s)
    probs = np.exp(x - x.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    u = rng.random((probs.shape[0], 1))
    return np.minimum((np.cumsum(probs, -1) < u).sum(-1), probs.shape[-1] - 1).astype(np.int64)
