"""The int8 KV-cache layout ``kv-quant`` writes, and its NumPy quantizer.

Per layer and K/V, the graph input ``past_key_values.{i}.{key|value}`` becomes int8
``[batch, kv_heads, past_seq, head_dim]`` beside a float32 scale input
``past_key_values.{i}.{key|value}_scale`` ``[batch, kv_heads, past_seq, 1]``; the
outputs ``present.{i}.{key|value}`` / ``..._scale`` are the same pair for the whole
sequence. One symmetric scale per (batch, head, token): ``s = max|x| / 127`` over
the head dimension (at least ``MIN_SCALE``), ``q = clip(round_half_even(x / s),
-127, 127)``, ``x ≈ q · s``. Re-quantizing a dequantized row gives the same int8
row, so prefill and decode see the same cache.

The layout is recorded as JSON in the model metadata (``KV_QUANT_KEY``):
``{"dtype": "int8", "granularity": "per-head-token", "scales": {past: scale_input, ...}}``.
"""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir

from genzip.metadata import KV_QUANT_KEY

QMAX = 127.0
MIN_SCALE = 1e-8  # an all-zero token row keeps a finite scale (its int8 row is zeros)
SCALE_SUFFIX = "_scale"


def quantize_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int8 ``q``, float32 ``s`` with last dim 1) of ``x`` [..., D], as the graph computes them."""
    x = np.asarray(x, np.float32)
    s = np.maximum(np.abs(x).max(axis=-1, keepdims=True) / np.float32(QMAX), np.float32(MIN_SCALE))
    q = np.clip(np.rint(x / s), -QMAX, QMAX).astype(np.int8)
    return q, s.astype(np.float32)


def layout(model: ir.Model) -> dict | None:
    raw = model.metadata_props.get(KV_QUANT_KEY)
    return json.loads(raw) if raw else None


def quantize_feeds(model: ir.Model, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``feeds`` for the float cache turned into feeds for ``model``'s int8 cache (unchanged
    when the model has none): each float past becomes its int8 rows plus their scales."""
    spec = layout(model)
    if spec is None:
        return feeds
    out = dict(feeds)
    for past, scale in spec["scales"].items():
        if past in feeds and feeds[past].dtype == np.float32:
            out[past], out[scale] = quantize_rows(feeds[past])
    return out
