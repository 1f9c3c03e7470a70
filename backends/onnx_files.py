"""Writing an ``onnx_ir.Model`` into an artifact folder (the protobuf boundary)."""

from __future__ import annotations

import os

import onnx_ir as ir

# Protobuf cannot hold more than 2 GiB; past that, weights go to a side file.
PROTOBUF_LIMIT = 2 * 1024**3 - 1024**2


def initializer_bytes(model: ir.Model) -> int:
    total = 0
    for v in model.graph.initializers.values():
        if v.const_value is not None:
            total += v.const_value.nbytes
    return total


def save_model(model: ir.Model, folder: str, name: str = "model.onnx") -> list[str]:
    """Save ``model`` as ``folder/name``; returns the file names written."""
    path = os.path.join(folder, name)
    if initializer_bytes(model) > PROTOBUF_LIMIT:
        data = name + ".data"
        ir.save(model, path, external_data=data)
        return [name, data]
    # Weights loaded from an external-data file must be pulled in before saving
    # into one file, or the artifact would point outside itself.
    ir.external_data.load_to_model(model)
    ir.save(model, path)
    return [name]
