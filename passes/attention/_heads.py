"""Head layout of a canonical ``Attention`` node: the GQA group and the scale.

One definition for every attention rewrite. Both answer ``None`` when the graph
does not say statically, so a pass can leave the node alone with a reason instead
of guessing (a symbolic head count never divides into a wrong group).
"""

from __future__ import annotations

import math

import onnx_ir as ir


def gqa_group(node: ir.Node) -> int | None:
    """Query heads per KV head (1 for multi-head attention), or None when unknown."""
    q, k = node.inputs[0], node.inputs[1]
    if q.shape is None or k.shape is None:
        return None
    hq, hkv = q.shape[1], k.shape[1]
    if hq == hkv:
        return 1
    if isinstance(hq, int) and isinstance(hkv, int) and hkv > 0 and hq % hkv == 0:
        return hq // hkv
    return None


def attention_scale(node: ir.Node) -> float | None:
    """The ``scale`` attribute, or ONNX's default 1/sqrt(D) when D is static, else None."""
    attr = node.attributes.get("scale")
    if attr is not None:
        return float(attr.as_float())
    shape = node.inputs[0].shape
    d = shape[3] if shape is not None and len(shape) == 4 else None
    return 1.0 / math.sqrt(d) if isinstance(d, int) and d > 0 else None
