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

Forms this covers: initializer masks (static exports fold transformers' mask to a
constant), masks computed from shapes (``Trilu``, ``Range``/compare/``Where``,
transformers' ``masking_utils`` subgraph of a dynamic export), float additive (0 /
-inf) and bool masks. ``mask_kind`` also names a mask ``"causal-padding"`` when it
reads an ``attention_mask``-like graph input ``[B, n]`` (int/bool) by value and,
evaluated with that input all ones, is exactly causal, and with left, right and
scattered padding rows equals causal AND ``attention_mask[b, j]`` (query rows that
see no key at all are not compared). That is evidence by evaluation on those
patterns, not a proof for every input; span-attn never drops such a mask (its
replacement has no padding input), it only counts it. KV-cache masks
(``Skv != Sq``) are not recognized.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import common

logger = logging.getLogger(__name__)


CAUSAL, CAUSAL_PADDING = "causal", "causal-padding"


def _cone(mask: ir.Value) -> tuple[set[str], set[str]] | None:
    """(graph inputs read only via ``Shape``, graph inputs read for their values), or None
    when the mask reads a value of another scope or an unknown one."""
    shape_inputs, value_inputs, seen, stack = set(), set(), set(), [mask]
    while stack:
        value = stack.pop()
        node = value.producer()
        if node is None:
            if value.is_graph_input():
                value_inputs.add(value.name)  # read for its values, not just its shape
                continue
            if value.const_value is None:
                return None  # an outer-scope or otherwise unknown value
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.op_type == "Shape" and node.domain in ("", "ai.onnx"):
            src = node.inputs[0]
            if src is not None and src.is_graph_input():
                shape_inputs.add(src.name)
                continue
        if node.graph is not None and node.graph is not mask.producer().graph:
            return None
        stack.extend(v for v in node.inputs if v is not None)
    return shape_inputs, value_inputs


def _ort_errors() -> tuple[type[Exception], ...]:
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    names = ("Fail", "InvalidArgument", "InvalidGraph", "NotImplemented", "RuntimeException")
    return tuple(getattr(state, name) for name in names) + (RuntimeError,)


def _evaluate(model: ir.Model, mask_name: str, needed: set[str], symbolic: int,
              patterns: list[dict[str, np.ndarray]] | None = None) -> list[np.ndarray] | None:
    """The mask evaluated in ORT: inputs read via Shape are zeros with symbolic dims at
    ``symbolic``; each of ``patterns`` (input name -> array) gives one evaluation."""
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
        runs = [{**feeds, **{k: a.astype(feeds[k].dtype) for k, a in p.items()}} for p in (patterns or [{}])]
        return [sess.run(None, f)[0] for f in runs]
    except _ORT_ERRORS as e:
        logger.info("mask %s could not be evaluated: %s", mask_name, e)
        return None


def _allowed(value: np.ndarray) -> np.ndarray | None:
    """Where a bool (True = attend) or additive float (0 / < -1e4) mask lets keys through."""
    if value.dtype == np.bool_:
        return value
    if value.dtype.kind == "f" and np.all((value == 0) | (value < -1e4)):
        return value == 0
    return None


def _causal(value: np.ndarray, n: int) -> bool:
    if value.ndim < 2 or value.shape[-2:] != (n, n):
        return False
    allowed = _allowed(value)
    return allowed is not None and bool(np.all(allowed == np.tril(np.ones((n, n), dtype=bool))))


def _padding_patterns(batch: int, n: int) -> list[np.ndarray]:
    """0/1 key-padding rows ``[batch, n]``: none, left, right and scattered padding."""
    rng = np.random.default_rng(0)
    patterns = [np.ones((batch, n), dtype=np.int64)]
    for _ in range(3):
        rows = np.ones((batch, n), dtype=np.int64)
        for b in range(batch):
            style = rng.integers(3)
            cut = int(rng.integers(1, max(n, 2)))
            if style == 0:
                rows[b, :cut] = 0
            elif style == 1:
                rows[b, cut:] = 0
            else:
                rows[b] = rng.integers(0, 2, n)
        patterns.append(rows)
    return patterns


def _causal_with_padding(value: np.ndarray, pad: np.ndarray, n: int) -> bool:
    """``value`` is causal AND ``pad[b, j]`` (rows that may attend nothing are not compared:
    exporters differ on what a fully padded query row sees)."""
    if value.ndim != 4 or value.shape[-2:] != (n, n) or value.shape[0] not in (1, pad.shape[0]):
        return False
    allowed = _allowed(value)
    if allowed is None:
        return False
    expected = np.tril(np.ones((n, n), dtype=bool))[None, None] & (pad[:, None, None, :] != 0)
    allowed = np.broadcast_to(allowed, np.broadcast_shapes(allowed.shape, expected.shape))
    expected = np.broadcast_to(expected, allowed.shape)
    rows = expected.any(axis=-1, keepdims=True)  # query rows with at least one visible key
    return bool(np.all((allowed == expected) | ~rows))


def _padding_inputs(model: ir.Model, names: set[str], n: int) -> list[ir.Value] | None:
    """The graph inputs a mask reads by value, if all are attention_mask-like ``[B, n]`` int/bool."""
    found = [v for v in model.graph.inputs if v.name in names]
    for v in found:
        ok_type = v.dtype is not None and (v.dtype.is_integer() or v.dtype == ir.DataType.BOOL)
        if not ok_type or v.shape is None or len(v.shape) != 2 or v.shape[1] != n:
            return None
    return found if len(found) == len(names) else None


def mask_kind(model: ir.Model, mask: ir.Value, n: int, cache: dict | None = None) -> str | None:
    """``"causal"`` when ``mask`` provably is the causal mask for sequence length ``n``,
    ``"causal-padding"`` when it is causal AND a key-padding mask read from an
    ``attention_mask``-like graph input, else None (see the module docstring)."""
    if cache is not None and id(mask) in cache:
        return cache[id(mask)]
    found = _cone(mask) if mask.name else None
    result = None
    if mask.producer() is None and mask.const_value is not None:
        result = CAUSAL if _causal(mask.const_value.numpy(), n) else None  # an initializer: its value is the proof
    elif found is not None and not found[1]:
        arrays = [_evaluate(model, mask.name, found[0], s) for s in (1, 2)]
        result = CAUSAL if all(a is not None and _causal(a[0], n) for a in arrays) else None
    elif found is not None:
        result = _padded_kind(model, mask, n, *found)
    if cache is not None:
        cache[id(mask)] = result
    return result


def _padded_kind(model: ir.Model, mask: ir.Value, n: int, shape_inputs: set[str], value_inputs: set[str]):
    pads = _padding_inputs(model, value_inputs, n)
    if pads is None:
        return None
    for symbolic in (1, 2):
        batch = pads[0].shape[0] if isinstance(pads[0].shape[0], int) else symbolic
        if any(p.shape[0] != pads[0].shape[0] for p in pads):
            return None
        patterns = _padding_patterns(batch, n)
        arrays = _evaluate(model, mask.name, shape_inputs | value_inputs, symbolic,
                           [{p.name: rows for p in pads} for rows in patterns])
        if arrays is None or not _causal(arrays[0], n):
            return None  # all keys present must give exactly the causal mask
        if not all(_causal_with_padding(a, rows, n) for a, rows in zip(arrays[1:], patterns[1:])):
            return None
    return CAUSAL_PADDING


def is_static_causal(model: ir.Model, mask: ir.Value, n: int, cache: dict | None = None) -> bool:
    """True if ``mask`` provably equals the causal mask for sequence length ``n`` (see module doc)."""
    return mask_kind(model, mask, n, cache) == CAUSAL
