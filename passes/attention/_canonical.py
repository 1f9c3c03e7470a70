"""The canonical attention form, as a node builder.

Invariant: a canonical attention is one opset-23 ``Attention`` node (default domain)
with an explicit ``scale`` and ``is_causal`` and the three ``genzip.attn`` node keys
of :mod:`genzip.metadata` (kind, index in attention-site order, module scope), the
form ``canonicalize-attn`` establishes and the attention passes rewrite. Tests and
benchmarks build attentions with :func:`canonical_attention_node` so they start from
that form rather than from a hand-copied variant of it.
"""

from __future__ import annotations

import onnx_ir as ir

from genzip.metadata import ATTN_INDEX_KEY, ATTN_KIND_KEY, ATTN_SCOPE_KEY

OPSET = 23  # the first opset with ``Attention``


def canonical_attention_node(
    q: ir.Value, k: ir.Value, v: ir.Value, *, scale: float, causal: bool = False,
    kind: str = "self", index: int = 0, scope: str | None = None, name: str | None = None,
) -> ir.Node:
    """An ``Attention(q, k, v)`` node in canonical form; ``scope`` defaults to ``blocks.{index}.attn``."""
    attrs = ir.convenience.convert_attributes({"scale": float(scale), "is_causal": int(causal)})
    meta = {ATTN_KIND_KEY: kind, ATTN_INDEX_KEY: str(index),
            ATTN_SCOPE_KEY: scope if scope is not None else f"blocks.{index}.attn"}
    return ir.Node("", "Attention", [q, k, v], attrs, num_outputs=1, name=name or f"attn_{index}",
                   metadata_props=meta)
