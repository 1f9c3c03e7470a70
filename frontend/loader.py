"""``load_model``: turn a model reference into a verified :class:`SourceModel`.

A reference is, in the order tried:

1. a preset name (see :data:`genzip.frontend.PRESETS`);
2. an existing path: a file is read as ONNX, a folder as a Hugging Face model;
3. ``package.module:function`` returning ``(nn.Module, example_inputs)``.

Anything else that looks like a path is a missing path; otherwise it is taken
for a misspelt preset.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from genzip.errors import GenzipError
from genzip.frontend.callable_ref import is_callable_ref
from genzip.frontend.presets import PRESETS
from genzip.frontend.source import SourceModel

logger = logging.getLogger(__name__)


def _looks_like_path(ref: str) -> bool:
    return os.sep in ref or "/" in ref or ref.startswith((".", "~")) or ref.lower().endswith(".onnx")


def load_model(ref: str, *, seed: int = 0, batch: int | None = None, kv_cache: bool = False) -> SourceModel:
    """Load ``ref`` (preset, .onnx file, local HF folder or ``module:function``).

    ``seed`` seeds random weights (presets) and example inputs; ``batch``
    overrides the example batch size (presets: 2 for DiTs, 1 for LLMs).
    Torch-based references are exported to ONNX opset 23 and checked against
    eager PyTorch (``fidelity``); user errors raise :class:`GenzipError`.

    ``info`` keys: ``family`` ("dit" | "unet" | "llm" | "diffusers" | None),
    ``class``, ``batch``, ``seed``, ``preset`` (presets), ``path`` (files and
    folders), ``dims`` (ONNX files: chosen sizes of symbolic dims); for torch
    references also ``module`` (eager nn.Module, not serializable),
    ``reference_outputs`` (eager outputs by ONNX output name), ``dynamic``
    (bool: batch axis dynamic), ``dynamic_axes``, ``export_s``, ``removed_noops``.

    ``kv_cache`` (local transformers causal-LM folders only) exports the decoder with
    past/present key-values (:mod:`genzip.frontend.hf_kv_cache`); ``info`` then also
    has ``kv_cache`` (cache shape facts) and ``extra_files`` (tokenizer files to copy).
    """
    if not isinstance(ref, str) or not ref.strip():
        raise GenzipError(
            "empty model reference", "pass a preset name, an .onnx file, a folder or package.module:function"
        )
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise GenzipError(f"batch must be a positive integer, got {batch!r}", "pass batch=1 or more")
    ref = ref.strip()
    kind = classify_ref(ref)
    if kv_cache and kind != "folder":
        raise GenzipError(
            f"--kv-cache needs a local transformers causal-LM folder, and '{ref}' is a {kind} reference",
            "pass the model's save_pretrained() folder, or drop --kv-cache",
        )
    if kind == "preset":
        from genzip.frontend.presets import load_preset

        return load_preset(ref, seed=seed, batch=batch)
    path = Path(ref).expanduser()
    if kind == "onnx":
        from genzip.frontend.onnx_file import load_onnx_file

        return load_onnx_file(path, seed=seed, batch=batch)
    if kind == "folder":
        from genzip.frontend.hf_folder import load_hf_folder

        return load_hf_folder(path, seed=seed, batch=batch, kv_cache=kv_cache)
    from genzip.frontend.callable_ref import load_callable

    return load_callable(ref, seed=seed, batch=batch)


def classify_ref(ref: str) -> str:
    """Say what ``ref`` is ("preset", "onnx", "folder", "callable") without loading it.

    Raises the missing-path / unknown-preset errors, so callers can fail before
    any slow work or progress output.
    """
    ref = ref.strip()
    if ref in PRESETS:
        return "preset"
    path = Path(ref).expanduser()
    if path.is_file():
        return "onnx"
    if path.is_dir():
        return "folder"
    if is_callable_ref(ref):
        return "callable"
    if _looks_like_path(ref):
        raise GenzipError(
            f"'{ref}' does not exist",
            "check the path; genzip never downloads from a model hub, so download the model "
            "first and pass its local folder",
        )
    from genzip.frontend.presets import get_preset

    get_preset(ref)  # raises the unknown-reference error with did-you-mean
    raise AssertionError("unreachable")
