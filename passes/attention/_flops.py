"""Attention FLOP counting for dense, windowed and span attention.

Also finds the canonical attention sites the substitution passes rewrite.

Invariant: FLOPs are ``2·B·Hq·P·(D + Dv)`` where ``P`` is the exact number of
(query, key) pairs the op lets interact (QKᵀ costs 2·D per pair, PV 2·Dv), so a
restricted op is never counted as free and dense/window ratios are exact. Pair
counts are closed forms, cheap for any sequence length. Softmax and masking are
not counted (lower order).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Sequence

import onnx_ir as ir

from genzip.errors import GenzipError
from genzip.metadata import ATTN_INDEX_KEY as INDEX_KEY
from genzip.metadata import ATTN_KIND_KEY as KIND_KEY
from genzip.metadata import ATTN_KIND_REASON_KEY as KIND_REASON_KEY
from genzip.metadata import ATTN_SCOPE_KEY as SCOPE_KEY
from genzip.metadata import SHARE_LAYOUT_KEY

logger = logging.getLogger(__name__)


def band_pairs(sq: int, skv: int, left: int, right: int) -> int:
    """Pairs (i < sq, j < skv) with ``-left <= j - i <= right`` (left/right may exceed sizes)."""
    if sq <= 0 or skv <= 0:
        return 0
    lo, hi = max(-left, -(sq - 1)), min(right, skv - 1)
    if lo > hi:
        return 0
    total = 0
    # For offset d = j - i, the count is min(sq, skv - d) - max(0, -d); sum it in closed
    # form over the ranges where each min/max branch is fixed.
    neg_hi = min(hi, -1)
    if lo <= neg_hi:  # d < 0: count = min(sq + d, skv) over d in [lo, neg_hi]
        total += _sum_min_linear(lo, neg_hi, sq, skv)
    pos_lo = max(lo, 0)
    if pos_lo <= hi:  # d >= 0: count = min(sq, skv - d)
        total += _sum_min_linear(-hi, -pos_lo, skv, sq)
    return total


def _sum_min_linear(a: int, b: int, base: int, cap: int) -> int:
    """sum_{d=a..b} min(base + d, cap), all terms positive in our use."""
    split = min(b, cap - base)  # base + d <= cap for d <= split
    total = 0
    if a <= split:
        n = split - a + 1
        total += n * base + (a + split) * n // 2
    if split < b:
        total += (b - max(a, split + 1) + 1) * cap
    return total


def dense_pairs(sq: int, skv: int, causal: bool = False) -> int:
    """All pairs, or ONNX ``is_causal`` pairs (top-left aligned: j <= i)."""
    return band_pairs(sq, skv, sq, 0) if causal else sq * skv


def window_pairs(n: int, window: int) -> int:
    """Pairs with ``|i - j| <= window`` in an n x n self-attention."""
    return band_pairs(n, n, window, window)


def span_pairs(n: int, span: int, sinks: int) -> int:
    """Pairs with j <= i and (j < sinks or i - j < span)."""
    band = band_pairs(n, n, span - 1, 0)
    last = n - span  # rows i >= span see sinks below the band: min(sinks, i - span + 1) of them
    if last <= 0 or sinks <= 0:
        return band
    if last <= sinks:
        return band + last * (last + 1) // 2
    return band + sinks * (sinks + 1) // 2 + (last - sinks) * sinks


def attention_flops(batch: int, heads: int, pairs: int, d: int, dv: int | None = None) -> int:
    return 2 * batch * heads * pairs * (d + (d if dv is None else dv))


def static_dims(value: ir.Value | None, rank: int = 4) -> tuple[int, ...] | None:
    """The value's dims when all are static ints, else None."""
    if value is None or value.shape is None or len(value.shape) != rank:
        return None
    dims = value.shape.dims
    return tuple(dims) if all(isinstance(d, int) for d in dims) else None


def canonical_attention_flops(node: ir.Node, batch_if_dynamic: int = 1) -> int | None:
    """FLOPs of a canonical ``Attention`` node (dense, or causal); None if shapes are unknown.

    A symbolic batch counts as ``batch_if_dynamic`` (per-sample FLOPs); any other
    symbolic dim makes the count unknown.
    """
    shapes = [_with_batch(v, batch_if_dynamic) for v in node.inputs[:3]]
    if any(s is None for s in shapes):
        return None
    (b, hq, sq, d), (_, _, skv, _), (_, _, _, dv) = shapes
    causal = bool(node.attributes.get_int("is_causal", 0))
    return attention_flops(b, hq, dense_pairs(sq, skv, causal), d, dv)


def _with_batch(value: ir.Value | None, batch: int) -> tuple[int, ...] | None:
    if value is None or value.shape is None or len(value.shape) != 4:
        return None
    dims = list(value.shape.dims)
    if not isinstance(dims[0], int):
        dims[0] = batch
    return tuple(dims) if all(isinstance(x, int) for x in dims) else None


def restricted_flops(q: ir.Value, v: ir.Value, pairs: int | Sequence[int], batch_if_dynamic: int = 1) -> int | None:
    """FLOPs of an attention whose every head (int) or head h (list) sees that many pairs."""
    qs, vs = _with_batch(q, batch_if_dynamic), _with_batch(v, batch_if_dynamic)
    if qs is None or vs is None:
        return None
    per_head = [pairs] * qs[1] if isinstance(pairs, int) else list(pairs)
    return sum(attention_flops(qs[0], 1, p, qs[3], vs[3]) for p in per_head)


# --- Canonical attention sites ------------------------------------------------------



@dataclasses.dataclass(frozen=True)
class AttentionSite:
    """One canonical ``Attention`` node (see canonicalize-attn) and its metadata."""

    node: ir.Node
    kind: str  # "self" | "cross" | "unknown" (see _classify; passes needing self attention refuse it)
    index: int

    @property
    def scope(self) -> str:
        return self.node.metadata_props.get(SCOPE_KEY, "")

    @property
    def kind_reason(self) -> str:
        return self.node.metadata_props.get(KIND_REASON_KEY, "")


def refuse_unknown(sites: list[AttentionSite], pass_name: str, fix: str) -> None:
    """One-line GenzipError naming the first unclassified attention among ``sites`` and why."""
    for site in sites:
        if site.kind == "unknown":
            where = f"'{site.node.name}'" + (f" ({site.scope})" if site.scope else "")
            raise GenzipError(
                f"{pass_name}: attention {site.index} {where} is neither self nor cross attention: "
                f"{site.kind_reason or 'canonicalize-attn could not classify it'}", fix,
            )


# Ops that replace canonical attention, and the pass that writes each.
_REPLACED_BY = {"WindowAttention": "window-attn", "SpanAttention": "span-attn"}


def no_op_reason(pass_name: str, model: ir.Model, sites: list[AttentionSite], skipped: dict[str, int],
                 wanted: str = "self-attention") -> str:
    """Why a pass replaced no attention, logged as a warning and returned (for NoOpError)."""
    earlier = sorted({_REPLACED_BY[n.op_type] for n in ir.traversal.RecursiveGraphIterator(model.graph)
                      if n.domain == "genzip" and n.op_type in _REPLACED_BY})
    if model.metadata_props.get(SHARE_LAYOUT_KEY):
        earlier.append("share-attn")
    kinds = collections.Counter(s.kind for s in sites)
    if not kinds.get("self") and earlier:
        why = f"found no {wanted}: {' and '.join(earlier)} before it replaced them"
        if pass_name == "share-attn" and "window-attn" in earlier:
            why += "; use share-attn's own window modes instead"
    elif not sites:
        why = f"found no {wanted}: the model has no attention canonicalize-attn recognised"
    else:
        parts = [f"{c} classified {k}" for k, c in sorted(kinds.items()) if k != "self"]
        parts += [f"{c} skipped: {r}" for r, c in sorted(skipped.items())]
        why = f"replaced none of the {len(sites)} attention(s): {'; '.join(parts) or 'none selected'}"
    logger.warning("%s %s", pass_name, why)
    return why


def attention_sites(model: ir.Model) -> list[AttentionSite]:
    """Canonical Attention nodes in the main graph and subgraphs, ordered by index."""
    sites = []
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.op_type != "Attention" or node.domain not in ("", "ai.onnx"):
            continue
        kind = node.metadata_props.get(KIND_KEY)
        try:
            index = int(node.metadata_props.get(INDEX_KEY, ""))
        except ValueError:
            index = None
        if kind not in ("self", "cross", "unknown") or index is None:
            logger.warning("Attention node %s has no canonical metadata; left alone", node.name)
            continue
        sites.append(AttentionSite(node, kind, index))
    return sorted(sites, key=lambda s: s.index)


def unsupported_reason(node: ir.Node, causal: bool, mask_ok: bool = False) -> str | None:
    """Why a canonical node cannot take a banded replacement, or None if it can.

    ``mask_ok``: the caller has proven the node's mask input redundant (e.g. a
    causal mask, see ``moa_mask``) and will drop it.
    """
    mask = node.inputs[3] if len(node.inputs) > 3 else None
    if any(v is not None for v in node.inputs[4:]) or (mask is not None and not mask_ok):
        return "has-mask"
    if len(node.outputs) != 1:
        return "extra-outputs"
    if bool(node.attributes.get_int("is_causal", 0)) != causal:
        return "causal" if not causal else "not-causal"
    if node.attributes.get_float("softcap", 0.0):
        return "softcap"
    q, k = node.inputs[0], node.inputs[1]
    if q is None or k is None or q.shape is None or k.shape is None or len(q.shape) != 4 or len(k.shape) != 4:
        return "unknown-rank"
    if q.shape[2] != k.shape[2]:
        return "query-key-lengths-differ"
    return None
