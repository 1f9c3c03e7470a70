"""ONNX Runtime backend: sessions, and the ORT-optimized model written into artifacts."""

from __future__ import annotations

import os

import onnxruntime as ort

OPTIMIZED_NAME = "model.ort.onnx"
# EXTENDED fusions keep the model portable across CPUs; ALL would add
# hardware-specific layouts (NCHWc) that are tied to the build machine.
OPTIMIZATION_LEVEL = "extended"


def session_options(threads: int | None = None, level: str = "all") -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = {
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    return opts


def make_session(path_or_bytes: str | bytes, threads: int | None = None, level: str = "all") -> ort.InferenceSession:
    return ort.InferenceSession(path_or_bytes, session_options(threads, level), providers=["CPUExecutionProvider"])


def write_optimized(folder: str, source_name: str = "model.onnx") -> list[str]:
    """Let ORT apply its graph optimizations once and store the result next to the model."""
    opts = session_options(level=OPTIMIZATION_LEVEL)
    opts.optimized_model_filepath = os.path.join(folder, OPTIMIZED_NAME)
    ort.InferenceSession(os.path.join(folder, source_name), opts, providers=["CPUExecutionProvider"])
    return [OPTIMIZED_NAME]
