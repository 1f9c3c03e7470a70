"""The human-editable precision plan: JSON ``{"version": 1, "layers": {LAYER: FORMAT}}``.

``mixed-precision`` writes it; ``annotate-precision{plan=FILE}`` reads it back, so
an expert can hand-tune the allocation. ``LAYER`` is the layer's torch module path
(``transformer_blocks.0.attn1.to_q``) when that path names exactly one quantizable
node, else the ONNX node name; ``FORMAT`` is one of ``sensitivity_formats.FORMATS``.
Any other top-level key (``info``: budget, averages) is informational. Invariant:
a plan that loads maps every key to a real quantizable node and a known format;
otherwise the error is one line naming the key or the parse problem.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import onnx_ir as ir

from genzip import jsonfile
from genzip.errors import GenzipError, did_you_mean
from genzip.passes.infra.module_paths import module_path
from genzip.passes.quant._formats import FORMATS
from genzip.passes.quant._spec import QUANT_OPS, weight_value

PLAN_VERSION = 1


def quantizable(model: ir.Model, ops=QUANT_OPS) -> list[ir.Node]:
    return [n for n in model.graph if n.op_type in ops and weight_value(n) is not None]


def layer_keys(nodes: list[ir.Node]) -> dict[str, ir.Node]:
    """Plan key -> node, in graph order (module path when unique, else node name)."""
    paths = [module_path(n) or "" for n in nodes]
    counts = Counter(paths)
    out: dict[str, ir.Node] = {}
    for node, path in zip(nodes, paths):
        key = path if path and counts[path] == 1 else (node.name or path)
        if key in out:
            raise GenzipError(f"two quantizable nodes share the plan key '{key}'", "give the ONNX nodes unique names")
        out[key] = node
    return out


def read_plan(path: str) -> dict[str, str]:
    """Layer -> format from a plan file; one-line GenzipError for anything malformed."""
    body = jsonfile.read_json(path, "precision plan", "fix the file or regenerate it with mixed-precision{plan=FILE}")
    layers = body.get("layers") if isinstance(body, dict) else None
    if not isinstance(body, dict) or body.get("version") != PLAN_VERSION or not isinstance(layers, dict):
        raise GenzipError(f"plan '{path}' is not a version-{PLAN_VERSION} plan",
                          'write {"version": 1, "layers": {"LAYER": "FORMAT", ...}}')
    for key, fmt in layers.items():
        if fmt not in FORMATS:
            hint = did_you_mean(str(fmt), FORMATS)
            raise GenzipError(f"plan '{path}': layer '{key}' has unknown format {fmt!r}{hint}",
                              f"use one of {', '.join(FORMATS)}")
    return dict(layers)


def check_keys(plan: dict[str, str], keys, path: str) -> None:
    """Every plan key names a quantizable node of this model (stale plans fail here)."""
    unknown = [k for k in plan if k not in keys]
    if unknown:
        more = f" and {len(unknown) - 1} more" if len(unknown) > 1 else ""
        raise GenzipError(
            f"plan '{path}' names layer '{unknown[0]}'{more}, which is not a quantizable node of this model"
            f"{did_you_mean(unknown[0], keys)}",
            "regenerate the plan for this model or fix the layer names (keys: module path or node name)",
        )


def write_plan(path: str, layers: dict[str, str], info: dict[str, Any]) -> None:
    """Atomic write (temp file + rename)."""
    body = json.dumps({"version": PLAN_VERSION, "info": info, "layers": layers}, indent=1) + "\n"
    jsonfile.write_atomic(path, lambda f: f.write(body), prefix=".plan-")
