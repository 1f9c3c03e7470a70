"""The low-rank bi-branch KV-cache layout ``cskv`` writes: its fit, NumPy twin and fact.

Per layer and K/V (``X`` = ``key`` or ``value``, ``kv_heads`` heads of ``head_dim``
channels, width ``D = kv_heads * head_dim``, rank ``r``, a multiple of ``kv_heads``):

* ``past_key_values.{i}.X`` ``[batch, kv_heads, past_seq, r / kv_heads]``: every
  cached token's rank-r features ``f = x A`` (``x`` the token's ``D`` channels, heads
  concatenated; ``A`` ``[D, r]`` the initializer named ``basis``), float32, or int8
  with ``past_key_values.{i}.X_scale`` ``[batch, kv_heads, past_seq, 1]`` (one scale
  per head and token, as ``kv-quant``);
* with a window ``W > 0``, ``past_key_values.{i}.X_window`` ``[batch, kv_heads,
  min(past_seq, W), head_dim]``: the last ``W`` tokens at full precision.

Outputs ``present.{i}.X`` (``_scale``, ``_window``) are the same for ``past_seq + seq``
tokens. Attention reads ``x ≈ f Aᵀ`` for tokens older than the window and the exact
window rows for the last ``W``. The runtime sizes a ``_window`` slot ``min(tokens, W)``.

The fit (:func:`fit_basis`): ``A`` = the top ``r`` right singular vectors of the
calibration activations ``Y`` ``[tokens, D]`` (the cached rows themselves), which
minimises ``||Y - Y A Aᵀ||_F`` over rank-r reconstructions (Eckart–Young): CSKV's
layer-wise reconstruction objective ``||XW - XAB||`` with ``Y = XW``, solved in
closed form instead of by gradient steps.

The layout is recorded as JSON in the model metadata (``CSKV_KEY``):
``{"rank", "window", "int8", "slots": {past: {"basis", "kv_heads", "head_dim",
"window_input" | None, "scale_input" | None}}}``.
"""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir

from genzip.metadata import CSKV_KEY
from genzip.passes.quant._kv_layout import quantize_rows

WINDOW_SUFFIX = "_window"


def fit_basis(rows: np.ndarray, rank: int) -> tuple[np.ndarray, float]:
    """(``A`` ``[D, rank]`` float32 with orthonormal columns, relative reconstruction error
    ``||Y - Y A Aᵀ|| / ||Y||`` on ``rows`` ``[N, D]``)."""
    y = np.asarray(rows, np.float64)
    _, sv, vt = np.linalg.svd(y, full_matrices=False)
    basis = vt[:rank].T
    total = float(np.sum(sv**2))
    error = float(np.sqrt(max(total - float(np.sum(sv[:rank] ** 2)), 0.0) / total)) if total > 0 else 0.0
    return basis.astype(np.float32), error


def layout(model: ir.Model) -> dict | None:
    raw = model.metadata_props.get(CSKV_KEY)
    return json.loads(raw) if raw else None


def compress(x: np.ndarray, basis: np.ndarray, kv_heads: int) -> np.ndarray:
    """``x`` ``[b, kv_heads, t, head_dim]`` -> features ``[b, kv_heads, t, r / kv_heads]``,
    as the graph computes them."""
    b, h, t, d = x.shape
    flat = np.asarray(x, np.float32).transpose(0, 2, 1, 3).reshape(b, t, h * d)
    feats = flat @ basis
    return np.ascontiguousarray(feats.reshape(b, t, kv_heads, -1).transpose(0, 2, 1, 3))


def compress_feeds(model: ir.Model, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``feeds`` for the float full-width cache turned into feeds for ``model``'s cskv cache
    (unchanged when the model has none): features (int8 + scales with ``int8``) plus the
    last ``window`` full rows."""
    spec = layout(model)
    if spec is None:
        return feeds
    out = dict(feeds)
    inits = model.graph.initializers
    for past, slot in spec["slots"].items():
        x = feeds.get(past)
        if x is None or x.dtype != np.float32 or x.shape[-1] != slot["head_dim"]:
            continue
        feats = compress(x, inits[slot["basis"]].const_value.numpy(), slot["kv_heads"])
        if slot["scale_input"]:
            out[past], out[slot["scale_input"]] = quantize_rows(feats)
        else:
            out[past] = feats
        if slot["window_input"]:
            out[slot["window_input"]] = np.ascontiguousarray(x[:, :, max(0, x.shape[2] - spec["window"]):])
    return out


def kv_lowrank_problem(model: ir.Model) -> str | None:
    """Every slot the layout names has its feature input (last dim ``rank / kv_heads``), its
    ``[D, rank]`` basis, its window input (last dim ``head_dim``) and matching outputs."""
    spec = layout(model)
    if not spec or not spec.get("slots"):
        return "the model has no cskv layout"
    g = model.graph
    inputs, outputs = {v.name: v for v in g.inputs}, {v.name for v in g.outputs}
    for past, slot in spec["slots"].items():
        value = inputs.get(past)
        width = slot["kv_heads"] * slot["head_dim"]
        if value is None or value.shape is None or value.shape[-1] != spec["rank"] // slot["kv_heads"]:
            return f"cache input '{past}' is missing or not {spec['rank'] // slot['kv_heads']} features wide"
        basis = g.initializers.get(slot["basis"])
        if basis is None or basis.shape is None or list(basis.shape) != [width, spec["rank"]]:
            return f"cache input '{past}' has no [{width}, {spec['rank']}] basis '{slot['basis']}'"
        for extra, last in ((slot["window_input"], slot["head_dim"]), (slot["scale_input"], 1)):
            if extra is None:
                continue
            v = inputs.get(extra)
            if v is None or v.shape is None or v.shape[-1] != last:
                return f"cache input '{extra}' is missing or its last dim is not {last}"
            present = "present." + extra[len("past_key_values."):]
            if present not in outputs:
                return f"cache input '{extra}' has no output '{present}'"
    return None
