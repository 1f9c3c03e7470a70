"""Run a TensorRT artifact's engine, and choose between TensorRT and ONNX Runtime.

``choose_backend`` is the one place that decides which runtime ``genzip.load``
uses: TensorRT when the artifact carries an engine, ``tensorrt`` imports and torch
sees a CUDA device; ONNX Runtime otherwise. It returns the reason either way, so
the caller can say which runtime it took and why.

Invariant: importing this module imports neither ``tensorrt`` nor ``torch``;
``TrtModel`` takes and returns numpy arrays, like the ORT ``CompiledModel``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from genzip.backends import trt_backend
from genzip.errors import GenzipError

logger = logging.getLogger(__name__)


def _cuda_device() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def choose_backend(folder: str, manifest: dict[str, Any]) -> tuple[str, str]:
    """(``"tensorrt"`` or ``"onnxruntime"``, the reason in words)."""
    engine = (manifest.get("trt") or {}).get("engine")
    if not engine:
        return "onnxruntime", f"the artifact has no TensorRT engine (target {manifest.get('target')})"
    if not os.path.isfile(os.path.join(folder, engine)):
        return "onnxruntime", f"the engine file {engine} is missing from the artifact"
    if not trt_backend.tensorrt_available():
        return "onnxruntime", "the tensorrt package is not installed (pip install genzip[trt])"
    if not _cuda_device():
        return "onnxruntime", "no CUDA device is visible to torch"
    return "tensorrt", f"{engine} with TensorRT on the GPU"


class TrtModel:
    """A deserialized engine with one execution context; numpy in, numpy out."""

    def __init__(self, folder: str, manifest: dict[str, Any]):
        import tensorrt as trt
        import torch

        if manifest.get("trt", {}).get("plugins"):
            from genzip.plugins.trt_plugins import register

            register()
        self.torch = torch
        self.manifest = manifest
        self.folder = folder
        self.backend = "tensorrt"
        path = os.path.join(folder, manifest["trt"]["engine"])
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        with open(path, "rb") as f:
            self.engine = runtime.deserialize_cuda_engine(f.read())
        if self.engine is None:
            raise GenzipError(f"TensorRT could not deserialize {path}",
                              "rebuild the artifact with this TensorRT version and GPU (genzip-compile --target trt)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]

    def _torch_dtype(self, name: str):
        import tensorrt as trt

        return {trt.float32: self.torch.float32, trt.float16: self.torch.float16, trt.bfloat16: self.torch.bfloat16,
                trt.int32: self.torch.int32, trt.int64: self.torch.int64, trt.bool: self.torch.bool,
                trt.int8: self.torch.int8}[self.engine.get_tensor_dtype(name)]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self.torch
        keep = []
        for name in self.input_names:
            t = torch.from_numpy(np.ascontiguousarray(feeds[name])).to("cuda", self._torch_dtype(name))
            keep.append(t)
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        outs = {}
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            outs[name] = torch.empty(shape, dtype=self._torch_dtype(name), device="cuda")
            self.context.set_tensor_address(name, outs[name].data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise GenzipError("TensorRT failed to execute the engine", "run with --debug and check the TensorRT log")
        stream.synchronize()
        return {k: v.cpu().numpy() for k, v in outs.items()}
