"""Synthesize seeded example inputs from an ONNX graph's input types.

Dims:

* a static dim is used as is;
* a symbolic dim is *batch-like* when its name contains "batch" (or is ``N``,
  ``B``, ``bs``), or it is axis 0 of some input of rank >= 2; batch-like dims
  become ``batch`` (default 1), every other symbolic/unknown dim becomes
  ``DEFAULT_DIM`` (16). A symbol takes one value across all inputs; a dim named
  by arithmetic on symbols (``past_sequence_length + sequence_length``) is computed.

Values: floats ~ N(0, 1); integers uniform in [0, ``DEFAULT_DIM``) (safe as
token ids / indices for most models), except inputs named ``*mask*``, which
are all ones, and integers the graph constrains (Gather indices, TopK k, Split
sizes, Slice axes, ...: see ``_integer_feeds``); booleans are all True.
"""

from __future__ import annotations

import ast
import operator
import re

import numpy as np
import onnx_ir as ir

from genzip.errors import GenzipError
from genzip.frontend._integer_feeds import fill_integers, integer_rule

DEFAULT_DIM = 16
_BATCH_NAME = re.compile(r"batch|^(n|b|bs)$", re.IGNORECASE)


def graph_feed_inputs(graph: ir.Graph) -> list[ir.Value]:
    """Graph inputs that need a feed (inputs that are also initializers have defaults)."""
    return [v for v in graph.inputs if not v.is_initializer()]


def _batch_like_symbols(inputs: list[ir.Value]) -> set[str]:
    names = set()
    for value in inputs:
        shape = value.shape or []
        for axis, dim in enumerate(shape):
            if isinstance(dim, ir.SymbolicDim) and dim.value is not None:
                if _BATCH_NAME.search(dim.value) or (axis == 0 and len(shape) >= 2):
                    names.add(dim.value)
    return names


def synthesize_inputs(
    graph: ir.Graph, *, seed: int, batch: int | None
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Return ``(feeds, symbol -> chosen size)``."""
    inputs = graph_feed_inputs(graph)
    batch_like = _batch_like_symbols(inputs)
    rng = np.random.default_rng(seed)
    chosen: dict[str, int] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for value in inputs:
        if value.shape is None or value.dtype is None:
            raise GenzipError(
                f"ONNX input '{value.name}' has no declared shape or type",
                "add shapes/types to the graph inputs (e.g. with onnx.shape_inference) and retry",
            )
        dims = []
        for axis, dim in enumerate(value.shape):
            if isinstance(dim, int):
                dims.append(dim)
                continue
            sym = dim.value
            if sym is not None and not sym.isidentifier():
                dims.append(None)  # an expression of other symbols: filled in below
                continue
            is_batch = sym in batch_like if sym is not None else (axis == 0 and value.shape.rank() >= 2)
            size = (batch or 1) if is_batch else DEFAULT_DIM
            if sym is not None:
                size = chosen.setdefault(sym, size)
            dims.append(size)
        shapes[value.name] = tuple(dims)
    for value in inputs:
        if None in shapes[value.name]:
            shapes[value.name] = tuple(
                size if size is not None else _expression_size(dim.value, chosen)
                for size, dim in zip(shapes[value.name], value.shape))
    # Values second: an integer input's valid range can depend on another input's chosen shape.
    feeds: dict[str, np.ndarray] = {}
    for value in inputs:
        shape = shapes[value.name]
        rule = integer_rule(value, shapes) if _is_integer(value.dtype) and "mask" not in value.name.lower() else None
        if rule is None:
            feeds[value.name] = _random(value.name, value.dtype, shape, rng)
            continue
        if rule.length is not None and len(shape) == 1 and not isinstance(value.shape[0], int):
            shape = (rule.length,)
        feeds[value.name] = fill_integers(rule, shape, value.dtype.numpy(), rng, DEFAULT_DIM)
    return feeds, chosen


_ARITHMETIC = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv}


def _expression_size(expression: str, chosen: dict[str, int]) -> int:
    """The size of a dim named by arithmetic on other dims (Optimum's
    ``past_sequence_length + sequence_length``), so every input agrees on it; a symbol
    seen only here gets ``DEFAULT_DIM``. Anything else is ``DEFAULT_DIM`` too."""

    def value(node: ast.expr) -> int | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name):
            return chosen.setdefault(node.id, DEFAULT_DIM)
        if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
            left, right = value(node.left), value(node.right)
            if left is None or right is None or (isinstance(node.op, ast.FloorDiv) and right == 0):
                return None
            return _ARITHMETIC[type(node.op)](left, right)
        return None

    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError:
        return chosen.setdefault(expression, DEFAULT_DIM)
    size = value(tree.body)
    return chosen.setdefault(expression, size if size is not None and size > 0 else DEFAULT_DIM)


def _is_integer(dtype: ir.DataType) -> bool:
    return dtype.is_integer()


def _random(name: str, dtype: ir.DataType, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    try:
        np_dtype = dtype.numpy()
    except TypeError:
        np_dtype = None
    if np_dtype is None or dtype == ir.DataType.STRING:
        raise GenzipError(
            f"ONNX input '{name}' has type {dtype.name}, which genzip cannot synthesize",
            "use a model whose inputs are numeric tensors",
        )
    if dtype == ir.DataType.BOOL:
        return np.ones(shape, dtype=np.bool_)
    if dtype.is_floating_point():
        return rng.standard_normal(shape).astype(np_dtype)
    if "mask" in name.lower():
        return np.ones(shape, dtype=np_dtype)
    return rng.integers(0, DEFAULT_DIM, size=shape).astype(np_dtype)
