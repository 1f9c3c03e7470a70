"""Bring one ONNX ``Attention`` node to the canonical 4D form, in place.

* 3D inputs ``[B, S, heads*D]`` (``q_num_heads``/``kv_num_heads`` set) are split
  into heads with Reshape+Transpose, and the output is merged back the same way;
* outputs other than Y that nothing uses are dropped;
* ``scale`` (when the head size is static), ``is_causal``, ``softcap`` and
  ``qk_matmul_output_mode`` are made explicit; the head-count attributes go.

Nodes that cannot be expressed in that form (past key/value inputs, a used
present/QK output, a nonzero softcap) are refused with a ``GenzipError``.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from genzip.errors import GenzipError

_HEAD_ATTRS = ("q_num_heads", "kv_num_heads")
_SPLIT_PERM = [0, 2, 1, 3]  # [B, S, H, D] <-> [B, H, S, D]


def _rank(value: ir.Value | None) -> int | None:
    return len(value.shape) if value is not None and value.shape is not None else None


def _int_attr(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return attr.as_int() if attr is not None else default


def check_supported(node: ir.Node) -> None:
    """Raise ``GenzipError`` when ``node`` has no canonical equivalent."""
    where = f"Attention node '{node.name}'"
    if any(v is not None for v in node.inputs[4:]):
        raise GenzipError(
            f"{where} takes past key/value (or nonpad_kv_seqlen) inputs, which canonicalize-attn does not support",
            "export the model without a KV cache",
        )
    for out in node.outputs[1:]:
        if out.uses() or out.is_graph_output():
            raise GenzipError(
                f"{where} uses its output '{out.name}' (present key/value or QK scores)",
                "export the model without a KV cache or attention-probability outputs",
            )
    softcap = node.attributes.get("softcap")
    if softcap is not None and softcap.as_float() != 0.0:
        raise GenzipError(f"{where} has softcap={softcap.as_float()}", "canonical attention has no softcap")
    if "q_num_heads" not in node.attributes and _rank(node.inputs[0]) == 3:
        raise GenzipError(f"{where} has 3D inputs but no q_num_heads", "fix the exporter output")


def is_3d(node: ir.Node) -> bool:
    rank = _rank(node.inputs[0])
    if rank is not None:
        return rank == 3
    # Untyped Q: the spec allows the head-count attributes only with 3D inputs.
    return "q_num_heads" in node.attributes


def head_dim(node: ir.Node) -> int | None:
    """Static head size D of Q (4D ``[B, H, S, D]`` or 3D ``[B, S, H*D]``), or None."""
    shape = node.inputs[0].shape
    if shape is None or not isinstance(shape[-1], int):
        return None
    if len(shape) == 4:
        return shape[3]
    heads = _int_attr(node, "q_num_heads", 0)
    return shape[2] // heads if len(shape) == 3 and heads > 0 else None


def _const(tape: ir.tape.Tape, values: list[int]) -> ir.Value:
    tensor = ir.tensor(np.array(values, dtype=np.int64))
    out = tape.op("Constant", [], {"value": tensor})
    # Typed like onnxscript's constant propagation would, so a second run finds nothing to add.
    out.const_value, out.shape, out.dtype = tensor, tensor.shape, tensor.dtype
    return out


def _split_heads(tape: ir.tape.Tape, x: ir.Value, heads: int) -> ir.Value:
    """[B, S, heads*D] -> [B, heads, S, D]; shapes are typed so later passes can read them."""
    # Reshape's 0 copies B and S, so dynamic batch and sequence lengths keep working.
    split = tape.op("Reshape", [x, _const(tape, [0, 0, heads, -1])])
    out = tape.op("Transpose", [split], {"perm": _SPLIT_PERM})
    if x.shape is not None and len(x.shape) == 3:
        b, s, hidden = x.shape
        d = hidden // heads if isinstance(hidden, int) else None
        split.shape, out.shape = ir.Shape([b, s, heads, d]), ir.Shape([b, heads, s, d])
        split.dtype = out.dtype = x.dtype
    return out


def rebuild_4d(node: ir.Node) -> ir.Node:
    """Replace ``node`` by a single-output 4D Attention (splitting 3D heads if needed)."""
    tape = ir.tape.Tape()
    q, k, v = node.inputs[:3]
    mask = node.inputs[3] if len(node.inputs) > 3 else None
    attrs = {name: attr for name, attr in node.attributes.items() if name not in _HEAD_ATTRS}
    three_d = is_3d(node)
    if three_d:
        q_heads = _int_attr(node, "q_num_heads", 0)
        kv_heads = _int_attr(node, "kv_num_heads", q_heads)
        q, k, v = _split_heads(tape, q, q_heads), _split_heads(tape, k, kv_heads), _split_heads(tape, v, kv_heads)
    inputs = [q, k, v] + ([mask] if mask is not None else [])
    y = tape.op("Attention", inputs, attributes=attrs, name=node.name)
    new_node = y.producer()
    y.dtype = node.outputs[0].dtype
    if three_d:
        if q.shape is not None and v.shape is not None:
            y.shape = ir.Shape([q.shape[0], q.shape[1], q.shape[2], v.shape[3]])
        merged = tape.op("Transpose", [y], {"perm": _SPLIT_PERM})
        y = tape.op("Reshape", [merged, _const(tape, [0, 0, -1])])
    elif node.outputs[0].shape is not None:
        y.shape = node.outputs[0].shape
    for n in tape.nodes:
        n.metadata_props.update(node.metadata_props)
    ir.convenience.replace_nodes_and_values(node.graph, node, [node], tape.nodes, [node.outputs[0]], [y])
    return new_node


def normalize_attributes(node: ir.Node, d: int | None) -> bool:
    """Make the canonical attributes explicit on a 4D node; return whether any changed."""
    changed = False
    for name in _HEAD_ATTRS:
        if node.attributes.pop(name, None) is not None:
            changed = True
    if "scale" not in node.attributes and d:
        node.attributes["scale"] = ir.AttrFloat32("scale", 1.0 / math.sqrt(d))
        changed = True
    wanted = {
        "is_causal": ir.AttrInt64("is_causal", 1 if _int_attr(node, "is_causal", 0) else 0),
        "softcap": ir.AttrFloat32("softcap", 0.0),
        # Only mode 0 is canonical; check_supported made sure nothing reads the QK output.
        "qk_matmul_output_mode": ir.AttrInt64("qk_matmul_output_mode", 0),
    }
    for name, attr in wanted.items():
        old = node.attributes.get(name)
        if old is None or old.type != attr.type or old.value != attr.value:
            node.attributes[name] = attr
            changed = True
    return changed


def needs_rebuild(node: ir.Node) -> bool:
    return is_3d(node) or len(node.outputs) > 1
