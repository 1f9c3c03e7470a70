"""Causal-LM figures of ``genzip eval``: held-out perplexity, KL divergence and top-1 agreement.

Invariants:

* text is cut into non-overlapping windows of the artifact's sequence length (its
  ``input_ids`` length when fixed, else ``DEFAULT_SEQ_LEN``); each window is one
  independent prefill, so a fixed-length artifact is scored exactly as compiled;
* perplexity is ``exp(mean next-token NLL)`` over every window's positions 0..S-2
  predicting tokens 1..S-1 (the first token of a window is unscored), as the trainer's
  ``_lm.perplexity`` computes it; only trained LMs get it, on the KJV held-out split
  tokenized with their own tokenizer;
* ``kl_divergence`` is the mean over all positions of KL(P_reference || P_artifact) in
  nats, ``top1_agreement`` the fraction of positions where both argmax tokens agree;
  both need ``--vs`` and are computed on the same windows;
* a model without real text is fed seeded random token ids, which is enough for the
  reference-relative figures but not for perplexity (then ``None``, with the reason).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from genzip.errors import GenzipError
from genzip.runtime import _eval_data

DEFAULT_SEQ_LEN = 128
BATCH = 8  # windows per call when the batch is dynamic


def _spec(model, name: str) -> dict | None:
    return next((s for s in model.inputs if s["name"] == name), None)


def seq_len(model) -> int:
    length = _spec(model, "input_ids")["shape"][1]
    return length if isinstance(length, int) else DEFAULT_SEQ_LEN


def vocab(model) -> int:
    shape = model.manifest["outputs"][0]["shape"]
    if len(shape) != 3 or not isinstance(shape[2], int):
        raise GenzipError(f"artifact {model.folder}'s first output has shape {shape}, not logits [batch, seq, vocab]",
                          "evaluate a causal LM artifact whose first output is its logits")
    return shape[2]


def _feeds(model, ids: np.ndarray) -> dict[str, np.ndarray]:
    feeds = {"input_ids": ids}
    for spec in model.inputs:
        name = spec["name"]
        if name == "input_ids":
            continue
        if name == "attention_mask":
            feeds[name] = np.ones_like(ids)
        elif name == "position_ids":
            feeds[name] = np.broadcast_to(np.arange(ids.shape[1], dtype=np.int64), ids.shape).copy()
        else:
            raise GenzipError(f"artifact {model.folder} has an input '{name}' that genzip eval cannot feed",
                              "evaluate a prefill LM artifact (input_ids, optionally attention_mask, position_ids)")
    return feeds


def logits(model, windows: np.ndarray, bar=None) -> np.ndarray:
    """Logits ``[N, S, V]`` (float64) of every window, in chunks of the artifact's batch."""
    batch = _spec(model, "input_ids")["shape"][0]
    per_call = batch if isinstance(batch, int) else BATCH
    out = []
    for start in range(0, len(windows), per_call):
        chunk = windows[start : start + per_call]
        real = len(chunk)
        if real < per_call and isinstance(batch, int):  # a fixed batch: pad with the last window, drop after
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], per_call - real, axis=0)])
        out.append(model.run(_feeds(model, chunk))[model.manifest["outputs"][0]["name"]][:real].astype(np.float64))
        if bar is not None:
            bar.update(real)
    return np.concatenate(out)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def perplexity(logp: np.ndarray, windows: np.ndarray) -> float:
    nll = -np.take_along_axis(logp[:, :-1], windows[:, 1:, None], axis=-1)
    return float(np.exp(nll.mean()))


def kl_and_top1(logp_ref: np.ndarray, logp: np.ndarray) -> tuple[float, float]:
    kl = np.sum(np.exp(logp_ref) * (logp_ref - logp), axis=-1)
    top1 = logp_ref.argmax(-1) == logp.argmax(-1)
    return float(max(kl.mean(), 0.0)), float(top1.mean())


def text_windows(model, n: int, seed: int, preset: str | None) -> tuple[np.ndarray, str]:
    length, size = seq_len(model), vocab(model)
    if preset in _eval_data.LLM_PRESETS:
        tok = _eval_data.tokenizer(preset)
        if len(tok) != size:
            raise GenzipError(f"the {preset} tokenizer has {len(tok)} tokens but artifact {model.folder} has "
                              f"{size} logits", "evaluate an artifact compiled from that preset")
        windows = _eval_data.heldout_token_windows(tok, length, n)
        return windows, f"KJV held-out chapters ({preset} tokenizer), non-overlapping {length}-token windows"
    rng = np.random.default_rng(seed)
    return (rng.integers(0, size, size=(n, length), dtype=np.int64),
            f"seeded random token ids (seed {seed}); this model has no held-out text")


def evaluate_llm(model, reference, *, samples: int, seed: int, preset: str | None,
                 progress: bool) -> tuple[dict[str, Any], dict[str, str]]:
    """(figures, why) of an LLM artifact ``model`` (a ``CompiledModel``) and optional ``reference``."""
    from tqdm import tqdm

    windows, described = text_windows(model, samples, seed, preset)
    runs = [("artifact", model)] + ([("reference", reference)] if reference is not None else [])
    logp: dict[str, np.ndarray] = {}
    with tqdm(total=len(runs) * len(windows), desc="genzip eval: scoring", unit="window",
              disable=not progress, leave=False) as bar:
        for name, m in runs:
            logp[name] = log_softmax(logits(m, windows, bar))
    figures: dict[str, Any] = {"text": described, "seq_len": int(windows.shape[1]), "windows": len(windows),
                               "tokens_scored": int(windows.shape[0] * (windows.shape[1] - 1)),
                               "perplexity": None, "reference_perplexity": None,
                               "kl_divergence": None, "top1_agreement": None}
    why: dict[str, str] = {}
    if preset in _eval_data.LLM_PRESETS:
        for name in logp:
            figures["perplexity" if name == "artifact" else "reference_perplexity"] = perplexity(logp[name], windows)
    else:
        why["perplexity"] = why["reference_perplexity"] = (
            f"needs real held-out text; only trained-llama / trained-moe have it (this artifact's preset is "
            f"{preset or 'none'})")
    if reference is not None:
        figures["kl_divergence"], figures["top1_agreement"] = kl_and_top1(logp["reference"], logp["artifact"])
    else:
        why["kl_divergence"] = why["top1_agreement"] = "needs a reference artifact (--vs REFERENCE_ARTIFACT)"
        why.setdefault("reference_perplexity", "needs a reference artifact (--vs REFERENCE_ARTIFACT)")
    return figures, why
