"""Output-change metrics of the sensitivity analysis. Every metric is a cost: 0 for an
unchanged output, larger is worse, and it is roughly additive over independently
quantized layers (the integer program sums them):

* ``sqnr`` (quality): noise-to-signal power ratio ``||y - ŷ||² / ||y||²`` of the whole
  output; reported as SQNR = -10·log10(cost) dB. Power of independent noise adds.
* ``content`` (structure, diffusion): ``1 - cos`` of the low-pass-filtered outputs
  (``POOL`` x ``POOL`` average pooling of each [C, H, W] prediction), which ignores
  high-frequency noise and tracks layout, as MixDQ's content metric does.
* ``kl`` (LLMs): mean over tokens of KL(softmax(y) || softmax(ŷ)) of the logits.
* ``grad`` (LLM-MQ): first-order loss change ``|gᵀ(W − Q(W))|``, computed with torch
  autograd on the source module (``sensitivity_grad``), not from outputs.
"""

from __future__ import annotations

import numpy as np

OUTPUT_METRICS = ("sqnr", "content", "kl")
METRICS = (*OUTPUT_METRICS, "grad")
POOL = 4


def family(rank: int, name: str) -> str:
    """'diffusion' for an image-like [B, C, H, W] output, 'llm' for [B, S, V] logits, else 'generic'."""
    if rank == 4:
        return "diffusion"
    if rank == 3 and "logit" in name.lower():
        return "llm"
    return "generic"


def auto_metrics(fam: str, has_torch: bool) -> tuple[str, ...]:
    if fam == "diffusion":
        return ("sqnr", "content")
    if fam == "llm":
        return ("kl", "grad") if has_torch else ("kl", "sqnr")
    return ("sqnr",)


def applicable(metric: str, rank: int, name: str) -> str | None:
    """None when ``metric`` can be computed on an output of this rank, else why not."""
    if metric == "content" and rank != 4:
        return f"content needs an image-like [B, C, H, W] output; '{name}' has rank {rank}"
    if metric == "kl" and rank < 2:
        return f"kl needs logits with a vocabulary axis; '{name}' has rank {rank}"
    return None


def nsr(ref: np.ndarray, out: np.ndarray) -> float:
    ref64 = ref.astype(np.float64)
    return float(np.sum((ref64 - out) ** 2) / max(np.sum(ref64**2), 1e-30))


def lowpass(x: np.ndarray) -> np.ndarray:
    """Average-pool H and W by ``POOL`` (cropped to a multiple), one vector per batch item."""
    b, c, h, w = x.shape
    p = POOL if h >= POOL and w >= POOL else 1
    x = x[:, :, : h - h % p, : w - w % p].astype(np.float64)
    return x.reshape(b, c, h // p, p, w // p, p).mean(axis=(3, 5)).reshape(b, -1)


def content(ref: np.ndarray, out: np.ndarray) -> float:
    a, b = lowpass(ref), lowpass(out)
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
    return float(np.mean(1.0 - cos))


def kl(ref: np.ndarray, out: np.ndarray) -> float:
    def log_softmax(z):
        z = z.astype(np.float64)
        z = z - z.max(axis=-1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))

    lp, lq = log_softmax(ref), log_softmax(out)
    return float(np.mean(np.sum(np.exp(lp) * (lp - lq), axis=-1)))


_FNS = {"sqnr": nsr, "content": content, "kl": kl}


def measure(metric: str, refs: list[np.ndarray], outs: list[np.ndarray]) -> float:
    """Mean of the metric over calibration samples (clamped at 0: float noise)."""
    fn = _FNS[metric]
    return max(float(np.mean([fn(r, o) for r, o in zip(refs, outs)])), 0.0)


def sqnr_db(cost: float) -> float:
    return float("inf") if cost <= 0 else -10.0 * float(np.log10(cost))
