"""genzip: compile generative models into small, fast ONNX Runtime / TensorRT artifacts.

Layers (each a subpackage): ``genzip.frontend`` turns a model reference into an
``onnx_ir.Model``; ``genzip.passes`` rewrites it; ``genzip.backends`` writes a
verified artifact folder; ``genzip.tools`` holds the command-line programs.
"""

from __future__ import annotations

__version__ = "0.1.0"

from genzip.errors import GenzipError

__all__ = ["GenzipError", "__version__", "load"]


def load(artifact: str):
    """Open a compiled artifact folder for inference (ONNX Runtime session)."""
    from genzip.backends.runner import load_artifact

    return load_artifact(artifact)
