"""Plain-data descriptions of a model for manifests and reports."""

from __future__ import annotations

import collections
import importlib.metadata
import platform
from typing import Any

import onnx_ir as ir

_VERSIONED = ("torch", "onnx", "onnx-ir", "onnxscript", "onnxruntime", "numpy", "transformers", "diffusers", "tensorrt")


def value_spec(value: ir.Value) -> dict[str, Any]:
    shape = None
    if value.shape is not None:
        shape = [d if isinstance(d, int) else (str(d) if d.value is not None else None) for d in value.shape]
    dtype = value.dtype.numpy().name if value.dtype is not None else None
    if value.dtype == ir.DataType.BFLOAT16:
        dtype = "bfloat16"
    return {"name": value.name, "shape": shape, "dtype": dtype}


def io_specs(model: ir.Model) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    inputs = [value_spec(v) for v in model.graph.inputs if v.name not in model.graph.initializers]
    return inputs, [value_spec(v) for v in model.graph.outputs]


def op_histogram(model: ir.Model) -> dict[str, int]:
    counts: collections.Counter[str] = collections.Counter()
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        counts[f"{node.domain}.{node.op_type}" if node.domain else node.op_type] += 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    from genzip._version import __version__

    found["genzip"] = __version__
    return found
