"""Checker of the fact ``sensitivity-measured``."""

from __future__ import annotations

import json

import onnx_ir as ir

from genzip.metadata import SENSITIVITY_KEY
from genzip.passes.quant._spec import annotated_nodes


def measured_problem(model: ir.Model) -> str | None:
    """The sensitivity table names exactly the annotated layers that are not kept."""
    layers = [n.name for n, s in annotated_nodes(model) if s.keep is None]
    raw = model.metadata_props.get(SENSITIVITY_KEY)
    if raw is None:
        return f"the model has no {SENSITIVITY_KEY} table" if layers else None
    try:
        body = json.loads(raw)
        measured = [row["node"] for row in body["layers"]]
    except (ValueError, KeyError, TypeError) as e:
        return f"the {SENSITIVITY_KEY} table is unreadable ({e})"
    if measured != layers:
        return f"the {SENSITIVITY_KEY} table covers {len(measured)} layers, the model has {len(layers)} annotated"
    return None
