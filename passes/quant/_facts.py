"""Checkers of the quantization facts: ``quant-annotated``, ``quant-calibrated``, ``quantized``."""

from __future__ import annotations

import json

import onnx_ir as ir

from genzip.metadata import QUANT_CALIB_KEY, QUANT_KEY
from genzip.passes.infra.graph import model_graphs
from genzip.passes.quant._spec import QuantSpec


def _annotations(model: ir.Model):
    for graph in model_graphs(model):
        for node in graph:
            raw = node.metadata_props.get(QUANT_KEY)
            if raw is not None:
                yield node, raw


def annotated_problem(model: ir.Model) -> str | None:
    """Every genzip.quant annotation parses as a QuantSpec of the node it sits on."""
    for node, raw in _annotations(model):
        try:
            spec = QuantSpec.from_json(raw)
        except (ValueError, KeyError, TypeError) as e:
            return f"node '{node.name}' has an unreadable {QUANT_KEY} annotation ({e})"
        if spec.op != node.op_type:
            return f"node '{node.name}' is {node.op_type} but its annotation is for {spec.op}"
    return None


def calibrated_problem(model: ir.Model) -> str | None:
    """Every annotation with static activations (not kept) has a finite, non-negative range
    (and, for ``bos``, token 0's row and spread)."""
    for node, raw in _annotations(model):
        spec = QuantSpec.from_json(raw)
        act = spec.activation
        if spec.keep is not None or act is None or act.dynamic:
            continue
        calib = node.metadata_props.get(QUANT_CALIB_KEY)
        if calib is None:
            return f"node '{node.name}' has static activations but no {QUANT_CALIB_KEY} range"
        if spec.bos and not {"bos_row", "bos_spread"} <= set(json.loads(calib)):
            return f"node '{node.name}' is annotated bos but calibration recorded no token-0 statistics"
        amax = json.loads(calib).get("amax")
        values = amax if isinstance(amax, list) else [amax]
        if not values or any(not isinstance(v, (int, float)) or not v >= 0 for v in values):
            return f"node '{node.name}' has an invalid activation range {amax!r}"
    return None


def quantized_problem(model: ir.Model) -> str | None:
    """No annotation is left for ``quant`` to consume."""
    left = [node.name for node, _ in _annotations(model)]
    left += [n.name for g in model_graphs(model) for n in g if QUANT_CALIB_KEY in n.metadata_props]
    if left:
        return f"{len(left)} annotation(s) left unconsumed: {sorted(set(left))[:5]}"
    return None
