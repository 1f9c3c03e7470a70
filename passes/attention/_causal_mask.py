"""Recognize attention masks that are plain causal masks in disguise.

torch exports of transformers LMs (tiny-llama included) pass ``Attention`` an
explicit boolean mask built from ``input_ids``' shape (arange, compare, And ...)
instead of setting ``is_causal``. ``span-attn`` may replace such a node only when
that mask is exactly causal, which this module proves by evaluation.

Invariant: ``is_static_causal(mask, n)`` is True only if (1) every path from the
mask back to a graph input passes through a ``Shape`` node, so the mask depends on
input shapes alone, never on input values, and (2) evaluated in ORT at the graph's
static dims (symbolic dims at 1 and at 2), the mask broadcasts to ``[.., n, n]``
with True (bool) or 0 (float) exactly where ``j <= i`` and False / -inf-like
(< -1e4) elsewhere. Anything it cannot prove returns False (the node is then
left alone, never wrongly rewritten).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import common

logger = logging.getLogger(__name__)


def _shape_only_cone(mask: ir.Value) -> tuple[list[ir.Node], set[str]] | None:
    """Nodes computing ``mask`` and the graph inputs they read (only via Shape), or None."""
    nodes, shape_inputs, seen, stack = [], set(), set(), [mask]
    while stack:
        value = stack.pop()
        node = value.producer()
        if node is None:
            if value.is_graph_input():
                return None  # read for its values, not just its shape
            if value.const_value is None:
                return None  # an outer-scope or otherwise unknown value
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        nodes.append(node)
        if node.op_type == "Shape" and node.domain in ("", "ai.onnx"):
            src = node.inputs[0]
            if src is not None and src.is_graph_input():
                shape_inputs.add(src.name)
                continue
        if node.graph is not None and node.graph is not mask.producer().graph:
            return None
        stack.extend(v for v in node.inputs if v is not None)
    return nodes, shape_inputs


def _ort_errors() -> tuple[type[Exception], ...]:
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    names = ("Fail", "InvalidArgument", "InvalidGraph", "NotImplemented", "RuntimeException")
    return tuple(getattr(state, name) for name in names) + (RuntimeError,)


def _evaluate(model: ir.Model, mask_name: str, needed: set[str], symbolic: int) -> np.ndarray | None:
    import onnxruntime as ort

    _ORT_ERRORS = _ort_errors()  # noqa: N806 - ORT's exception classes, resolved lazily
    copy = ir.from_proto(ir.to_proto(model))  # deep copy; the pass's model is never touched
    graph = copy.graph
    values = {v.name: v for n in graph for v in n.outputs}
    target = values.get(mask_name)
    if target is None:
        return None
    graph.outputs.clear()
    graph.outputs.append(target)
    keep = {v.name for v in graph.inputs if v.name in needed}
    graph.inputs[:] = [v for v in graph.inputs if v.name in keep]
    common.RemoveUnusedNodesPass()(copy)
    feeds = {}
    for v in graph.inputs:
        if v.shape is None or v.dtype is None:
            return None
        dims = [d if isinstance(d, int) else symbolic for d in v.shape.dims]
        feeds[v.name] = np.zeros(dims, dtype=v.dtype.numpy())
    try:
        sess = ort.InferenceSession(ir.to_proto(copy).SerializeToString(), providers=["CPUExecutionProvider"])
        return sess.run(None, feeds)[0]
    except _ORT_ERRORS as e:
        logger.info("mask %s could not be evaluated: %s", mask_name, e)
        return None


def _causal(value: np.ndarray, n: int) -> bool:
    if value.ndim < 2 or value.shape[-2:] != (n, n):
        return False
    tril = np.tril(np.ones((n, n), dtype=bool))
    if value.dtype == np.bool_:
        allowed = value
    elif value.dtype.kind == "f":
        if not np.all((value == 0) | (value < -1e4)):
            return False
        allowed = value == 0
    else:
        return False
    return bool(np.all(allowed == tril))


def is_static_causal(model: ir.Model, mask: ir.Value, n: int, cache: dict | None = None) -> bool:
    """True if ``mask`` provably equals the causal mask for sequence length ``n`` (see module doc)."""
    if cache is not None and id(mask) in cache:
        return cache[id(mask)]
    found = _shape_only_cone(mask) if mask.name else None
    result = False
    if mask.producer() is None and mask.const_value is not None:
        result = _causal(mask.const_value.numpy(), n)  # an initializer: its value is the proof
    elif found is not None:
        _, needed = found
        arrays = [_evaluate(model, mask.name, needed, s) for s in (1, 2)]
        result = all(a is not None and _causal(a, n) for a in arrays)
    if cache is not None:
        cache[id(mask)] = result
    return result
