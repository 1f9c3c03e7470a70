"""TensorRT backend gate. Engine building lands with the TensorRT issue; until then
``--target trt`` stops with a one-line error before anything is written."""

from __future__ import annotations

import importlib.util

from genzip.errors import GenzipError


def tensorrt_available() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


def require_tensorrt() -> None:
    """Raise the user-facing error when this machine cannot build TensorRT engines."""
    if not tensorrt_available():
        raise GenzipError(
            "--target trt needs the tensorrt Python package and an NVIDIA GPU, and this machine has neither",
            "run `pip install genzip[trt]` on a machine with an NVIDIA GPU and driver, or use --target ort",
        )
    raise GenzipError(
        "--target trt: engine building is not implemented in this genzip version",
        "use --target onnx and build the engine with trtexec, or --target ort",
    )
