"""Rewrite rules: decomposed scaled-dot-product attention -> one 4D ONNX ``Attention``.

Matched chain (rank 4 ``[B, H, S, D]``, or rank 3 ``[B*H, S, D]``)::

    q'     = q | Mul(q, c) | Div(q, c)            # pre-scaled rule only
    kT'    = kT | Mul(kT, c) | Div(kT, c)         # pre-scaled rule only
    scores = MatMul(q', kT')
    scores = scores | Mul(scores, c) | Div(scores, c)
    scores = scores | Add(scores, mask)
    y      = MatMul(Softmax(scores, axis=last), v)

Every ``c`` must be a one-element constant; their product is the explicit
``scale`` of the new node. ``kT`` is resolved back to K when it is
``Transpose(k, perm=[0,1,3,2])`` (``[0,2,1]`` at rank 3) or torch's
``Reshape(Transpose(Reshape(k, [-1,S,D]), [0,2,1]), [B,H,D,S])``; any other
``kT`` gets a ``Transpose`` inserted. Rank-3 chains are wrapped in
``Unsqueeze(axis 0)`` / ``Squeeze(axis 0)`` so the node always sees 4D.

Q/K/V ranks must be known (run ``infer-shapes`` first on untyped graphs), and
K/V batch and head dims must be ones ``Attention`` can take: the same batch as
Q, and K/V heads equal to each other and either Q's heads or 1.
"""

from __future__ import annotations

import math

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


def _factor(op_tag: str | None, const: ir.Value | None, operand_rank: int, what: str) -> float:
    """The multiplier one scaling node contributes (1.0 when there is none)."""
    if op_tag is None:
        return 1.0
    number = _ir_utils.get_singleton_value(const)
    # A one-element constant of higher rank than its operand would broadcast the rank up.
    if number is None or const.shape is None or len(const.shape) > operand_rank:
        raise MatchFailureError(f"{what} is not a one-element constant", const)
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

    def pattern(self, op, query, key, key_t, value, mask, q_scale, k_scale, qk_scale, shape1, shape2):
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
