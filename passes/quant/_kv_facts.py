"""Checker of the ``kv-int8`` fact (``kv-quant``)."""

from __future__ import annotations

import onnx_ir as ir

from genzip.passes.quant._kv_layout import SCALE_SUFFIX


def kv_int8_problem(model: ir.Model) -> str | None:
    """Some cache input/output (``past_key_values.*`` / ``present.*``, scales aside) is int8,
    every int8 one has a float32 ``*_scale`` twin, and the others are float32 (layers that
    ``kv-quant{layers=...}`` did not select)."""
    g = model.graph
    for values, prefix in ((g.inputs, "past_key_values."), (g.outputs, "present.")):
        by_name = {v.name: v for v in values}
        cache = [v for v in values if (v.name or "").startswith(prefix) and not v.name.endswith(SCALE_SUFFIX)]
        if not cache:
            return f"the graph has no {prefix}* cache values"
        if not any(v.dtype == ir.DataType.INT8 for v in cache):
            return f"no {prefix}* cache value is int8"
        for v in cache:
            scale = by_name.get(v.name + SCALE_SUFFIX)
            if v.dtype == ir.DataType.FLOAT and scale is None:
                continue
            if v.dtype != ir.DataType.INT8:
                return f"cache value '{v.name}' is {v.dtype}, not int8"
            if scale is None or scale.dtype != ir.DataType.FLOAT:
                return f"cache value '{v.name}' has no float32 '{v.name}{SCALE_SUFFIX}'"
    return None
