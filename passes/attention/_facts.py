"""Checker of the fact ``attention-canonical`` (the form documented in canonicalize_attn)."""

from __future__ import annotations

import onnx_ir as ir

from genzip.metadata import ATTN_INDEX_KEY, ATTN_KIND_KEY
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
