"""TensorRT backend gate and entry point.

``require_tensorrt()`` runs before anything is loaded or written: without the
``tensorrt`` package, or without an NVIDIA GPU and driver, ``--target trt`` stops
with a one-line ``GenzipError`` (exit 2) naming ``pip install genzip[trt]`` and the
GPU. ``write_engine`` is what the artifact writer calls for ``target == "trt"``
after ``model.onnx`` and ``inputs.npz`` are in the staged folder (``trt_build``).

Invariant: this module imports without TensorRT; ``tensorrt`` is imported only
after ``tensorrt_available()`` said it can be.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from genzip.errors import GenzipError

logger = logging.getLogger(__name__)

_FIX = "run `pip install genzip[trt]` on a machine with an NVIDIA GPU and driver, or use --target ort"


def tensorrt_available() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


def gpu_available() -> bool:
    """Whether TensorRT can open a CUDA device here (a Builder needs one)."""
    try:
        import tensorrt as trt

        return trt.Builder(trt.Logger(trt.Logger.ERROR)) is not None
    except (ImportError, OSError, RuntimeError, TypeError) as e:
        # TypeError: pybind11's "factory function returned nullptr" when no device exists.
        logger.debug("TensorRT cannot open a GPU: %s", e)
        return False


def require_tensorrt() -> None:
    """Raise the user-facing error when this machine cannot build TensorRT engines."""
    if not tensorrt_available():
        raise GenzipError(
            "--target trt needs the tensorrt Python package and an NVIDIA GPU, and this machine has neither", _FIX)
    if not gpu_available():
        raise GenzipError("--target trt needs an NVIDIA GPU and driver that TensorRT can open, and found none", _FIX)


def write_engine(folder: str, model_name: str, inputs: Sequence[Mapping[str, Any]],
                 example_inputs: Mapping[str, np.ndarray], options=None,
                 progress: Callable[[str], None] | None = None,
                 ranges: Mapping[str, Mapping[str, int]] | None = None) -> tuple[list[str], dict[str, Any]]:
    """Build ``folder/model.engine`` (updating the timing cache); return (file names, manifest
    ``trt`` section). ``progress`` gets TensorRT's build phases; ``ranges`` are the dynamic
    sizes' ranges (``--dynamic-axes``), each dim's profile min/max."""
    from genzip.backends.trt_build import build_engine

    shapes = {name: tuple(arr.shape) for name, arr in example_inputs.items()}
    return build_engine(folder, model_name, inputs, shapes, options, progress, ranges)
