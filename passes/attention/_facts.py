"""Checkers of the attention facts: ``attention-canonical`` (the form documented in
canonicalize_attn), ``attention-windowed`` (window-attn's nodes are well formed) and
``attention-shared`` (share-attn's layout matches its mode input)."""

from __future__ import annotations

import json

import onnx_ir as ir

from genzip.metadata import ATTN_INDEX_KEY, ATTN_KIND_KEY, ATTN_WINDOW_KEY, SHARE_LAYOUT_KEY
from genzip.passes.infra.graph import model_graphs

_HEAD_ATTRS = ("q_num_heads", "kv_num_heads")


def _node_problem(node: ir.Node) -> str | None:
    attrs = node.attributes
    if any(v is not None for v in node.inputs[4:]):
        return "it takes past key/value inputs"
    if len(node.outputs) != 1:
        return f"it has {len(node.outputs)} outputs"
    for i in range(3):
        shape = node.inputs[i].shape if i < len(node.inputs) and node.inputs[i] is not None else None
        if shape is not None and len(shape) != 4:
            return f"input {i} has rank {len(shape)}, not 4"
    if any(a in attrs for a in _HEAD_ATTRS):
        return "it carries q_num_heads/kv_num_heads"
    for name, want in (("softcap", 0.0), ("qk_matmul_output_mode", 0)):
        if name in attrs and attrs[name].value != want:
            return f"{name} is {attrs[name].value}"
    if "is_causal" not in attrs:
        return "is_causal is not explicit"
    if node.metadata_props.get(ATTN_KIND_KEY) not in ("self", "cross", "unknown"):
        return f"it has no {ATTN_KIND_KEY} metadata"
    if not node.metadata_props.get(ATTN_INDEX_KEY, "").isdigit():
        return f"it has no {ATTN_INDEX_KEY} metadata"
    return None


def canonical_problem(model: ir.Model) -> str | None:
    for graph in model_graphs(model):
        for node in graph:
            if node.op_type == "Attention" and node.domain in ("", "ai.onnx"):
                problem = _node_problem(node)
                if problem:
                    return f"Attention node '{node.name}' is not canonical: {problem}"
    return None


def windowed_problem(model: ir.Model) -> str | None:
    """Every ``genzip.WindowAttention`` node records its window and attention index."""
    for graph in model_graphs(model):
        for node in graph:
            if node.op_type == "WindowAttention" and node.domain == "genzip":
                if not node.metadata_props.get(ATTN_WINDOW_KEY, "").isdigit():
                    return f"WindowAttention node '{node.name}' has no {ATTN_WINDOW_KEY} metadata"
                if not node.metadata_props.get(ATTN_INDEX_KEY, "").isdigit():
                    return f"WindowAttention node '{node.name}' has no {ATTN_INDEX_KEY} metadata"
    return None


def shared_problem(model: ir.Model) -> str | None:
    """A share-attn layout, when present, lists one layer per entry of its mode input."""
    raw = model.metadata_props.get(SHARE_LAYOUT_KEY)
    if raw is None:
        return None
    try:
        layout = json.loads(raw)
    except json.JSONDecodeError:
        return f"{SHARE_LAYOUT_KEY} is not JSON"
    inputs = {v.name: v for v in model.graph.inputs}
    modes = inputs.get(layout.get("modes_input", ""))
    if modes is None or modes.shape is None or list(modes.shape) != [len(layout.get("layers", []))]:
        return f"{SHARE_LAYOUT_KEY} lists {len(layout.get('layers', []))} layers but the mode input does not match"
    return None
