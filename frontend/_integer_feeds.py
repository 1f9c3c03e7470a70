"""Values for synthesized integer inputs that the graph constrains.

Random integers in ``[0, DEFAULT_DIM)`` break models whose integer inputs feed
indices, sizes or axes. Where the graph shows the constraint, the input is walked
forward through value-preserving ops (Cast, Reshape, Unsqueeze, ...) to the ops that
read it, and its values are chosen so that op accepts them:

* Gather / GatherElements / GatherND indices: ``[0, min(dim, DEFAULT_DIM))`` of the indexed data axis
  (static dims, graph inputs' chosen sizes and initializers' shapes count as known);
* TopK ``k``, Tile repeats, Expand shape, ConstantOfShape shape: ones;
* Split sizes: an even split of the known axis length;
* Slice starts/ends: any value is clamped by ONNX, so only ``axes`` (``0..n-1``) and
  ``steps`` (ones) are set; Reduce*/Unsqueeze axes likewise;
* Reshape shape: ``[1, ..., 1, -1]``, valid for any element count;
* Range: start 0, limit ``DEFAULT_DIM``, delta 1; Pad pads: zeros; Div/Mod divisors:
  ``[1, DEFAULT_DIM)``.

Anything else stays random; if ONNX Runtime then rejects the inputs, the caller's
error says to pass the model's real inputs (``--inputs``).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

# Ops whose output carries the input's values unchanged (possibly reshaped or cast).
_PASS_THROUGH = {"Cast", "Identity", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Transpose", "CastLike"}


@dataclasses.dataclass
class IntegerRule:
    """How to fill one integer input: ``low <= v < high``, or a fixed ``fill`` function."""

    low: int = 0
    high: int | None = None
    fill: str | None = None  # "ones" | "zeros" | "arange" | "reshape" | "range" | "split"
    split_total: int | None = None
    length: int | None = None  # the 1-D length the op needs when the input's is symbolic
    why: str = ""


def _dim(value: ir.Value | None, axis: int, known: dict[str, tuple[int, ...]]) -> int | None:
    """The static length of ``value``'s ``axis``, from its type, its feed or its constant."""
    if value is None:
        return None
    shape: tuple | None = None
    if value.const_value is not None:
        shape = tuple(value.const_value.shape)
    elif value.name in known:
        shape = known[value.name]
    elif value.shape is not None:
        shape = tuple(d if isinstance(d, int) else None for d in value.shape)
    if shape is None or not -len(shape) <= axis < len(shape):
        return None
    return shape[axis]


def _terminal_uses(value: ir.Value, depth: int = 0) -> list[tuple[ir.Node, int]]:
    uses = []
    for node, index in value.uses():
        if node.op_type in _PASS_THROUGH and node.domain in ("", "ai.onnx") and index == 0 and depth < 8:
            for out in node.outputs:
                uses.extend(_terminal_uses(out, depth + 1))
        else:
            uses.append((node, index))
    return uses


def _rule_for_use(node: ir.Node, index: int, known: dict[str, tuple[int, ...]]) -> IntegerRule | None:
    if node.domain not in ("", "ai.onnx"):
        return None
    op = node.op_type
    axis = node.attributes.get_int("axis", 0)
    if op in ("Gather", "GatherElements") and index == 1:
        n = _dim(node.inputs[0], axis, known)
        return IntegerRule(0, n, why=f"{op} indices") if n else None
    if op == "GatherND" and index == 1:
        data = node.inputs[0]
        rank = len(known.get(data.name, ())) or (data.shape.rank() if data.shape is not None else 0)
        dims = [_dim(data, a, known) for a in range(rank)]
        dims = [d for d in dims if d]
        return IntegerRule(0, min(dims), why="GatherND indices") if dims else None
    if op == "TopK" and index == 1:
        return IntegerRule(fill="ones", length=1, why="TopK k")
    if (op in ("Tile", "Expand") and index == 1) or (
        op == "ConstantOfShape" and index == 0
    ):
        return IntegerRule(fill="ones", why=f"{op} sizes")
    if op == "Split" and index == 1:
        total = _dim(node.inputs[0], axis, known)
        return IntegerRule(fill="split", split_total=total, length=len(node.outputs), why="Split sizes") if total else None
    if op == "Slice" and index == 3:
        return IntegerRule(fill="arange", why="Slice axes")
    if op == "Slice" and index == 4:
        return IntegerRule(fill="ones", why="Slice steps")
    if (op.startswith("Reduce") or op == "Unsqueeze") and index == 1:
        return IntegerRule(fill="arange", why=f"{op} axes")
    if op == "Reshape" and index == 1:
        return IntegerRule(fill="reshape", why="Reshape shape")
    if op == "Range":
        return IntegerRule(fill="range", low=index, why="Range bounds")
    if op == "Pad" and index == 1:
        return IntegerRule(fill="zeros", why="Pad pads")
    if op in ("Div", "Mod") and index == 1:
        return IntegerRule(1, None, why=f"{op} divisor")
    return None


def integer_rule(value: ir.Value, known: dict[str, tuple[int, ...]]) -> IntegerRule | None:
    """The constraint the graph puts on integer input ``value``; ``None`` when it shows none."""
    rules = [r for r in (_rule_for_use(n, i, known) for n, i in _terminal_uses(value)) if r is not None]
    if not rules:
        return None
    fixed = [r for r in rules if r.fill is not None]
    if fixed:
        return fixed[0]
    highs = [r.high for r in rules if r.high is not None]
    return IntegerRule(max(r.low for r in rules), min(highs) if highs else None, why=rules[0].why)


def fill_integers(rule: IntegerRule, shape: tuple[int, ...], np_dtype, rng: np.random.Generator,
                  default_high: int) -> np.ndarray:
    """An array of ``shape`` that satisfies ``rule``."""
    count = int(np.prod(shape)) if shape else 1
    if rule.fill == "ones":
        flat = np.ones(count)
    elif rule.fill == "zeros":
        flat = np.zeros(count)
    elif rule.fill == "arange":
        flat = np.arange(count)
    elif rule.fill == "reshape":
        flat = np.ones(count)
        flat[-1] = -1
    elif rule.fill == "range":
        # start 0, limit default_high, delta 1; rule.low holds which of the three this is.
        flat = np.full(count, (0, default_high, 1)[min(rule.low, 2)])
    elif rule.fill == "split":
        total = rule.split_total or count
        flat = np.full(count, total // count)
        flat[-1] += total - flat.sum()
    else:
        # Never above default_high: the same draws as an unconstrained input when the bound is wider.
        high = min(rule.high, default_high) if rule.high is not None else default_high
        flat = rng.integers(rule.low, max(high, rule.low + 1), size=count)
    return flat.reshape(shape).astype(np_dtype)
