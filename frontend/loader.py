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
from typing import Any

from genzip.errors import GenzipError
from genzip.frontend.callable_ref import is_callable_ref
from genzip.frontend.dynamic_axes import DynamicAxes, refuse_axes
from genzip.frontend.export_sizes import ExportSizes, check_causal_lm, check_diffusers, refuse
from genzip.frontend.presets import PRESETS
from genzip.frontend.source import SourceModel
from genzip.frontend.user_inputs import UserData

logger = logging.getLogger(__name__)


def _looks_like_path(ref: str) -> bool:
    return os.sep in ref or "/" in ref or ref.startswith((".", "~")) or ref.lower().endswith(".onnx")


def load_model(ref: str, *, seed: int = 0, batch: int | None = None, kv_cache: bool = False,
               user: UserData | None = None, sizes: ExportSizes | None = None,
               axes: DynamicAxes | None = None) -> SourceModel:
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

    ``user`` carries the user's example inputs and calibration set
    (:mod:`genzip.frontend.user_inputs`); both are checked before any export, the inputs
    become ``example_inputs`` and the set ``info["calibration"]``.

    ``sizes`` (:mod:`genzip.frontend.export_sizes`) set the traced text length, latent
    height/width or sequence length of presets, folders and ``module:function`` references
    (as keywords); an ONNX file's shapes are its own, so sizes for one are an error.

    ``axes`` (:mod:`genzip.frontend.dynamic_axes`, ``--dynamic-axes``) keeps those axes
    dynamic in the export where the model allows it; an explicit request for an ONNX file
    or a ``--kv-cache`` export is an error (their shapes are their own).
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
    if kv_cache and user is not None and (user.inputs is not None or user.calib is not None):
        raise GenzipError("--inputs and --calib-data do not apply to a --kv-cache export (its inputs are the "
                          "prefill/decode cache layout)", "drop --inputs/--calib-data, or drop --kv-cache")
    if kind == "preset":
        from genzip.frontend.presets import load_preset

        return load_preset(ref, seed=seed, batch=batch, user=user, sizes=sizes, axes=axes)
    path = Path(ref).expanduser()
    if kind == "onnx":
        from genzip.frontend.onnx_file import load_onnx_file

        refuse(sizes, "an ONNX file (its input shapes are fixed by the file)",
               "pass inputs of the sizes you want with --inputs FILE.npz")
        refuse_axes(axes, "an ONNX file (its input shapes are the file's own)")
        return load_onnx_file(path, seed=seed, batch=batch, user=user)
    if kind == "folder":
        from genzip.frontend.hf_folder import load_hf_folder

        if kv_cache:
            refuse_axes(axes, "a --kv-cache export (its prefill and decode lengths are dynamic already)")
        return load_hf_folder(path, seed=seed, batch=batch, kv_cache=kv_cache, user=user, sizes=sizes, axes=axes)
    from genzip.frontend.callable_ref import load_callable

    return load_callable(ref, seed=seed, batch=batch, user=user, sizes=sizes, axes=axes)


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


def _is_torch_module(obj: Any) -> bool:
    import torch

    return isinstance(obj, torch.nn.Module)


def classify_object(obj: Any) -> str:
    """Say what an in-memory model is ("object": a torch module, "onnx-object": an ONNX
    ``ModelProto`` or ``onnx_ir.Model``) without loading it; anything else is an error."""
    import onnx
    import onnx_ir as ir

    if isinstance(obj, (onnx.ModelProto, ir.Model)):
        return "onnx-object"
    if _is_torch_module(obj):
        return "object"
    raise GenzipError(
        f"cannot compile a {type(obj).__name__}",
        "pass a torch.nn.Module (diffusers and transformers models are), an onnx.ModelProto, an onnx_ir.Model, "
        "or a reference string (preset, .onnx file, folder, package.module:function)",
    )


def object_family(obj: Any) -> str | None:
    """The family of a diffusers/transformers model object ("dit", "unet", "llm"), else None."""
    config = getattr(obj, "config", None)
    if config is None:
        return None
    from genzip.frontend import hf_inputs

    if type(obj).__module__.startswith("diffusers"):
        return hf_inputs.diffusers_family(type(obj).__name__)
    if type(obj).__module__.startswith("transformers") and hasattr(obj, "generate"):
        return "llm"
    return None


def load_object(obj: Any, example_inputs: Any = None, *, seed: int = 0, user: UserData | None = None,
                sizes: ExportSizes | None = None, axes: DynamicAxes | None = None) -> SourceModel:
    """Export and verify an in-memory model (``genzip.compile``).

    A torch module runs on ``example_inputs`` (a tensor, a tuple of tensors or a dict name ->
    tensor); diffusers denoisers and transformers causal LMs may omit them (genzip builds
    them as for their folders, at ``sizes`` when given). An ONNX model's ``example_inputs``
    are feeds by input name.
    """
    kind = classify_object(obj)
    name = type(obj).__name__
    if kind == "onnx-object":
        refuse(sizes, "an ONNX model (its input shapes are fixed by the model)",
               "pass example inputs of the sizes you want")
        refuse_axes(axes, "an ONNX model (its input shapes are the model's own)")
        import onnx
        import onnx_ir as ir

        from genzip.frontend.onnx_file import source_from_onnx

        model = ir.from_proto(obj) if isinstance(obj, onnx.ModelProto) else obj
        if example_inputs is not None:
            user = UserData(inputs=dict(example_inputs), calib=user.calib if user else None)
        return source_from_onnx(model, source=f"python:{name}", seed=seed, batch=None, user=user)
    from genzip.frontend import hf_inputs
    from genzip.frontend.from_torch import source_from_torch
    from genzip.frontend.torch_io import common_batch

    family, outputs = object_family(obj), None
    obj.eval()
    if example_inputs is not None:
        import numpy as np
        import torch
        from torch.utils import _pytree as pytree

        from genzip.frontend.callable_ref import as_module_call

        # NumPy arrays are welcome too: the call is made of tensors.
        example_inputs = pytree.tree_map(lambda x: torch.from_numpy(x) if isinstance(x, np.ndarray) else x,
                                         example_inputs)
        refuse(sizes, "a model given with example_inputs (they set its sizes)",
               "build example_inputs of the sizes you want and drop the size keywords")
        _, call = as_module_call((obj, example_inputs), f"python:{name}")
    elif family in ("dit", "unet", "diffusers"):
        import inspect

        from genzip.frontend.hf_folder import TEXT_LEN

        has_text = "encoder_hidden_states" in inspect.signature(obj.forward).parameters
        sizes = check_diffusers(sizes, obj, has_text=has_text)
        call = hf_inputs.diffusers_call(obj, batch=2, seed=seed, text_len=sizes.text_len or TEXT_LEN,
                                        height=sizes.height, width=sizes.width)
    elif family == "llm":
        from genzip.frontend.hf_folder import SEQ_LEN

        sizes = check_causal_lm(sizes, obj)
        call = hf_inputs.causal_lm_call(obj, batch=1, seed=seed, seq_len=sizes.seq_len or SEQ_LEN)
    else:
        raise GenzipError(f"genzip cannot build example inputs for a {name}",
                          "pass example_inputs (a tensor, a tuple of tensors or a dict name -> tensor)")
    if family in ("dit", "unet", "diffusers"):
        outputs = hf_inputs.DIFFUSERS_OUTPUTS
    elif family == "llm":
        outputs = hf_inputs.CAUSAL_LM_OUTPUTS
    info = {"family": family, "class": name, "batch": common_batch(call), "seed": seed}
    if sizes is not None and sizes.record():
        info["export_sizes"] = sizes.record()
    source = source_from_torch(obj, call, source=f"python:{name}", kind="object", output_names=outputs,
                               info=info, user=user, axes=axes)
    if family == "dit":  # no data given: the model's own denoising trajectory, as for presets and folders
        from genzip.frontend.calibration import example_sizes, preset_calibration

        shapes = example_sizes(source.example_inputs, batch=2, text_len=77)
        del shapes["seq_len"]
        source.info.setdefault("calibration", preset_calibration(obj, "dit", like=source.example_inputs,
                                                                 seed=seed, **shapes))
    return source
