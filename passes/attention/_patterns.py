"""Rewrite rules: decomposed scaled-dot-product attention -> one 4D ONNX ``Attention``.

Matched chain (rank 4 ``[B, H, S, D]``, or rank 3 ``[B*H, S, D]``)::

    q'     = q | Mul(q, c) | Div(q, c)            # pre-scaled rule only
    kT'    = kT | Mul(kT, c) | Div(kT, c)         # pre-scaled rule only
    scores = MatMul(q', kT')
    scores = scores | Mul(scores, c) | Div(scores, c)
    scores = scores | Add(scores, mask)
    probs  = Softmax(scores, axis=last)
    probs  = probs | Where(IsNaN(probs), 0, probs)   # TorchScript's NaN guard
    y      = MatMul(probs, v)

Every ``c`` must evaluate to one number; their product is the explicit ``scale``
of the new node. A ``c`` is a constant, or a scale the exporter computes in the
graph from shape values (TorchScript's ``Sqrt(Div(1, Sqrt(Cast(Slice(Shape(q))))))``
on each of Q and Kᵀ): ``_evaluate`` folds such subgraphs of Shape / Gather / Slice /
Cast / Sqrt / Div / Mul / ... with numpy, reading ``Shape`` off static dims, so the
scale need not be constant-foldable by ONNX (Q's other dims may be symbolic). ``kT`` is resolved back to K when it is
``Transpose(k, perm=[0,1,3,2])`` (``[0,2,1]`` at rank 3) or torch's
``Reshape(Transpose(Reshape(k, [-1,S,D]), [0,2,1]), [B,H,D,S])``; any other
``kT`` gets a ``Transpose`` inserted. Rank-3 chains are wrapped in
``Unsqueeze(axis 0)`` / ``Squeeze(axis 0)`` so the node always sees 4D.

The NaN guard (TorchScript's export of torch's ``_safe_softmax``) zeroes the rows of
``probs`` that are NaN. With finite Q/K/V and mask, a row is NaN only when the mask
hides every key of that query (all ``-inf``); a row with one visible key has a finite
maximum and no NaN. So dropping the guard is exact for rows with a visible key (every
row of a causal mask: the diagonal is always visible; every row of a finite mask, such
as transformers' ``finfo.min``), and for fully masked rows it is exact on ONNX
Runtime, whose ``Attention`` kernel returns zeros for them (bool or ``-inf`` mask;
tests/test_attention_matrix.py checks it), but not by the ONNX spec's function body,
which gives NaN there. NaN or inf in Q/K themselves would be zeroed by the guard and
propagated by ``Attention``.

Q/K/V ranks must be known (run ``infer-shapes`` first on untyped graphs), and
K/V batch and head dims must be ones ``Attention`` can take: the same batch as
Q, and K/V heads equal to each other and either Q's heads or 1.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import _ir_utils, pattern
from onnxscript.rewriter._basics import MatchFailureError

# Attributes every rewritten node carries; ``scale`` is added per match.
CANONICAL_ATTRS = {"is_causal": 0, "softcap": 0.0, "qk_matmul_output_mode": 0}


def _known(dim) -> bool:
    return isinstance(dim, int) or (isinstance(dim, ir.SymbolicDim) and dim.value is not None)


def _same(a, b) -> bool:
    return _known(a) and _known(b) and a == b


def _shape(value: ir.Value | None, what: str) -> ir.Shape:
    if value is None or value.shape is None:
        raise MatchFailureError(f"{what} has no known shape (run infer-shapes first)", value)
    return value.shape


_MAX_DEPTH = 16
_UNARY = {"Sqrt": np.sqrt, "Reciprocal": np.reciprocal, "Identity": lambda x: x, "Neg": np.negative,
          "Exp": np.exp, "Log": np.log}
_BINARY = {"Mul": np.multiply, "Add": np.add, "Sub": np.subtract, "Pow": np.power}


def _shape_value(node: ir.Node) -> np.ndarray | None:
    src = node.inputs[0]
    if src is None or src.shape is None:
        return None
    dims = list(src.shape)
    start, end = node.attributes.get_int("start", 0), node.attributes.get_int("end", len(dims))
    picked = dims[start:end]
    if all(isinstance(d, int) for d in picked):
        return np.array(picked, np.int64)
    # Symbolic dims stay None: Gather/Slice may still pick only static ones (the head dim).
    return np.array([d if isinstance(d, int) else None for d in picked], dtype=object)


def _numeric(a: np.ndarray) -> np.ndarray | None:
    """``a`` as numbers; None while it still holds a symbolic dim."""
    if a.dtype != object:
        return a
    return None if any(v is None for v in a.reshape(-1)) else a.astype(np.int64)


def _slice(data: np.ndarray, args: list[np.ndarray]) -> np.ndarray:
    starts, ends = args[0], args[1]
    axes = args[2] if len(args) > 2 else np.arange(len(starts))
    steps = args[3] if len(args) > 3 else np.ones(len(starts), np.int64)
    index = [slice(None)] * data.ndim
    for s, e, a, st in zip(starts, ends, axes, steps):
        index[int(a)] = slice(int(s), int(e), int(st))
    return data[tuple(index)]


def _evaluate(value: ir.Value | None, depth: int = 0) -> np.ndarray | None:
    """``value`` computed with numpy from constants and static shapes, or None."""
    if value is None:
        return None
    if value.const_value is not None:
        return value.const_value.numpy()
    node = value.producer()
    if node is None or depth > _MAX_DEPTH or node.domain not in ("", "ai.onnx") or len(node.outputs) != 1:
        return None
    op = node.op_type
    if op == "Shape":
        return _shape_value(node)
    if op == "Constant":
        attr = node.attributes.get("value")
        return attr.value.numpy() if attr is not None and attr.type == ir.AttributeType.TENSOR else None
    args = [_evaluate(v, depth + 1) for v in node.inputs if v is not None]
    if any(a is None for a in args) or not args:
        return None
    if op == "Gather" and len(args) == 2 and args[1].dtype != object:
        # asarray: taking one element of an object array (symbolic dims) gives a bare Python value.
        return np.asarray(np.take(args[0], args[1], axis=node.attributes.get_int("axis", 0)), dtype=args[0].dtype)
    if op == "Slice" and len(args) >= 3 and all(a.dtype != object for a in args[1:]):
        return _slice(args[0], args[1:])
    args = [_numeric(a) for a in args]
    if any(a is None for a in args):
        return None
    x = args[0]
    with np.errstate(all="ignore"):
        if op in _UNARY:
            return _UNARY[op](x)
        if op in _BINARY and len(args) == 2:
            return _BINARY[op](x, args[1]).astype(np.result_type(x, args[1]))
        if op == "Div" and len(args) == 2:
            if np.issubdtype(x.dtype, np.integer):
                return np.trunc(x / args[1]).astype(x.dtype)
            return np.divide(x, args[1])
        if op == "Cast":
            return x.astype(ir.DataType(node.attributes.get_int("to")).numpy())
        if op in ("Unsqueeze", "Squeeze", "Reshape") and len(args) == 2:
            return x.reshape(-1)[:1].reshape(()) if x.size == 1 else None
    return None


def scalar(value: ir.Value | None) -> float | None:
    """The one number ``value`` holds (a constant, or computed from shapes), else None."""
    number = _ir_utils.get_singleton_value(value) if value is not None and value.const_value is not None else None
    if number is not None:
        return float(number)
    folded = _evaluate(value)
    folded = _numeric(folded) if folded is not None else None
    if folded is None or folded.size != 1 or not np.issubdtype(folded.dtype, np.number):
        return None
    return float(folded.reshape(()))


def _factor(op_tag: str | None, const: ir.Value | None, operand_rank: int, what: str) -> float:
    """The multiplier one scaling node contributes (1.0 when there is none)."""
    if op_tag is None:
        return 1.0
    number = scalar(const)
    # A one-element scale of higher rank than its operand would broadcast the rank up.
    rank = len(const.shape) if const is not None and const.shape is not None else None
    if number is None or rank is None or rank > operand_rank:
        raise MatchFailureError(f"{what} is not one number", const)
    if op_tag == "Mul":
        return float(number)
    if number == 0:
        raise MatchFailureError(f"{what} divides by zero", const)
    return 1.0 / float(number)


def total_scale(bindings: dict, rank: int) -> float:
    """Product of the pre- and post-MatMul scale factors of one match."""
    scale = 1.0
    for tag, const, what in (
        ("q_scaling", "q_scale", "query scale"),
        ("k_scaling", "k_scale", "key scale"),
        ("qk_scaling", "qk_scale", "score scale"),
    ):
        scale *= _factor(bindings.get(tag), bindings.get(const), rank, what)
    if not math.isfinite(scale) or scale == 0.0:
        raise MatchFailureError(f"scale {scale} is not usable")
    return scale


def _key_layout_ok(key: ir.Value, key_t: ir.Value, mid: ir.Value | None) -> bool:
    """torch's Reshape/Transpose/Reshape K^T is a plain transpose when the shapes say so."""
    k, kt = key.shape, key_t.shape
    if k is None or kt is None or len(k) != 4 or len(kt) != 4:
        return False
    if not (_same(k[0], kt[0]) and _same(k[1], kt[1]) and _same(k[2], kt[3]) and _same(k[3], kt[2])):
        return False
    if mid is None or mid.shape is None or len(mid.shape) != 3:
        return False
    # The 3D view must be [B*H, S, D], so the flatten merged exactly the two leading dims.
    return _same(mid.shape[1], k[2]) and _same(mid.shape[2], k[3])


class DecomposedAttention(pattern.RewriteRuleClassBase):
    """MatMul/scale/mask/Softmax/MatMul -> Attention (opset >= 23 must be imported)."""

    def __init__(self, pre_scaled: bool):
        super().__init__(name="genzip-decomposed-attention" + ("-prescaled" if pre_scaled else ""))
        # Two rules rather than one optional alternative: the matcher commits to the first
        # alternative that matches, so an optional Mul(q, c) would swallow a Mul by a
        # non-constant (a QK-norm weight, say) and then fail the whole match.
        self._pre_scaled = pre_scaled

    def pattern(self, op, query, key, key_t, value, mask, q_scale, k_scale, qk_scale, shape1, shape2, nan_fill):
        key_3d = op.Reshape(key, shape1, _outputs=["key_3d"])
        key_t_torch = op.Reshape(op.Transpose(key_3d, perm=[0, 2, 1]), shape2, _outputs=["key_t_torch"])
        key_t = pattern.OrValue(
            [op.Transpose(key, perm=[0, 1, 3, 2]), op.Transpose(key, perm=[0, 2, 1]), key_t_torch, key_t],
            tag_var="key_layout",
            tag_values=["transpose", "transpose", "torch", "other"],
        )
        if self._pre_scaled:
            query = pattern.OrValue(
                [op.Mul(query, q_scale), op.Div(query, q_scale)], tag_var="q_scaling", tag_values=["Mul", "Div"]
            )
            key_t = pattern.OrValue(
                [op.Mul(key_t, k_scale), op.Div(key_t, k_scale), key_t],
                tag_var="k_scaling",
                tag_values=["Mul", "Div", None],
            )
        scores = op.MatMul(query, key_t, _outputs=["scores"])
        scores = pattern.OrValue(
            [op.Mul(scores, qk_scale), op.Div(scores, qk_scale), scores],
            tag_var="qk_scaling",
            tag_values=["Mul", "Div", None],
        )
        scores = pattern.OrValue([op.Add(scores, mask), scores], tag_var="has_mask", tag_values=[True, False])
        probs = op.Softmax(scores, _outputs=["probs"])
        # TorchScript's export of torch's _safe_softmax (masked SDPA): rows that are NaN
        # because every key is masked become zeros (see _guard_is_exact).
        probs = pattern.OrValue([op.Where(op.IsNaN(probs), nan_fill, probs), probs], tag_var="nan_guard",
                                tag_values=[True, False])
        return op.MatMul(probs, value)

    def check(self, context, query, key, key_t, value, mask, probs, scores, key_layout, **bindings):
        q_shape = _shape(query, "query")
        rank = len(q_shape)
        if rank not in (3, 4):
            raise MatchFailureError(f"query has rank {rank}, not 3 or 4", query)
        total_scale(bindings, rank)
        softmax = probs.producer()
        default_axis = -1 if context.model.opset_imports.get("", 0) >= 13 else 1
        axis_attr = softmax.attributes.get("axis")
        axis = axis_attr.as_int() if axis_attr is not None else default_axis
        if axis not in (-1, rank - 1):
            raise MatchFailureError(f"softmax axis {axis} is not the key axis", softmax)
        if key_layout == "torch" and not _key_layout_ok(key, bindings["key_t_torch"], bindings["key_3d"]):
            raise MatchFailureError("reshaped key transpose is not a plain transpose", key)
        k_shape = _shape(key if key is not None else key_t, "key")
        v_shape = _shape(value, "value")
        if len(k_shape) != rank or len(v_shape) != rank or len(_shape(scores, "scores")) != rank:
            raise MatchFailureError("query, key, value and scores ranks differ", value)
        if mask is not None and not _mask_keeps_shape(mask, scores, probs):
            raise MatchFailureError("the mask could broadcast the scores to a larger shape", mask)
        _check_heads(q_shape, k_shape, v_shape, rank)
        if bindings.get("nan_guard") and scalar(bindings.get("nan_fill")) != 0.0:
            raise MatchFailureError("the NaN guard does not fill zeros", bindings.get("nan_fill"))
        return True

    def rewrite(self, op, query, key, key_t, value, mask, key_layout, **bindings):
        rank = len(query.shape)
        scale = total_scale(bindings, rank)
        if key_layout in ("transpose", "torch"):
            k = key
        else:
            perm = [0, 2, 1] if rank == 3 else [0, 1, 3, 2]
            k = _typed(op.Transpose(key_t, perm=perm), [key_t.shape[i] for i in perm], key_t)
        q, v = query, value
        if rank == 3:
            # [B*H, S, D] -> [1, B*H, S, D]: the flattened heads become Attention's head axis.
            axes = op.Constant(value_ints=[0])
            q, k, v = (_typed(op.Unsqueeze(x, axes), [1, *x.shape], x) for x in (q, k, v))
            if mask is not None and len(mask.shape) == 3:
                mask = _typed(op.Unsqueeze(mask, axes), [1, *mask.shape], mask)
        inputs = [q, k, v] + ([mask] if mask is not None else [])
        y = op.Attention(*inputs, scale=scale, **CANONICAL_ATTRS)
        # Typed so later passes can read B, H, S and D off the canonical node.
        _typed(y, [q.shape[0], q.shape[1], q.shape[2], v.shape[3]], query)
        if rank == 3:
            y = op.Squeeze(y, axes)
        return y


def _typed(value: ir.Value, dims: list, like: ir.Value) -> ir.Value:
    value.shape, value.dtype = ir.Shape(dims), like.dtype
    return value


def _mask_keeps_shape(mask: ir.Value, scores: ir.Value, probs: ir.Value) -> bool:
    """Adding the mask must not broadcast the scores up (Attention's output follows Q)."""
    if mask.shape is None or scores.shape is None or probs.shape is None:
        return False
    if len(mask.shape) > len(scores.shape) or len(probs.shape) != len(scores.shape):
        return False
    return all(_same(a, b) for a, b in zip(scores.shape, probs.shape))


def _check_heads(q: ir.Shape, k: ir.Shape, v: ir.Shape, rank: int) -> None:
    """K/V must share Q's batch, and have one head count that is Q's or 1 (MQA)."""
    if rank == 4:
        batch_ok = _same(k[0], q[0])
        heads_ok = _same(k[1], q[1]) or k[1] == 1
        kv_ok = _same(v[0], k[0]) and _same(v[1], k[1])
    else:
        batch_ok = True  # the leading dim becomes the head axis after Unsqueeze
        heads_ok = _same(k[0], q[0]) or k[0] == 1
        kv_ok = _same(v[0], k[0])
    if not (batch_ok and heads_ok and kv_ok):
        raise MatchFailureError(f"batch/head dims Q{q} K{k} V{v} do not fit Attention")


def attention_rules() -> pattern.RewriteRuleSet:
    # Pre-scaled first: when its Q scale is not a constant, the plain rule still matches.
    return pattern.RewriteRuleSet(
        [DecomposedAttention.rule(pre_scaled=True), DecomposedAttention.rule(pre_scaled=False)], commute=True
    )
