"""``cskv``: a low-rank, bi-branch KV cache (CSKV, "Training-Efficient Channel Shrinking for
KV Cache in Long-Context Scenarios").

Works on ``genzip-compile FOLDER --kv-cache`` graphs, where each layer writes
``present.{i}.X = Concat(past_key_values.{i}.X, new, axis=2)`` and attention reads that
Concat. Per such pair (``new`` ``[b, kv_heads, seq, head_dim]``, heads concatenated
to ``D`` channels) the pass caches rank-r features instead of the ``D`` channels::

    f_new    = new · A                                 [b, kv_heads, seq, r / kv_heads]
    present  = Concat(past, f_new)                     -> present.{i}.X  (int8 + _scale with int8=true)
    rec      = present · Aᵀ                            [b, kv_heads, total, head_dim]
    window   = last W of Concat(past_window, new)      -> present.{i}.X_window (W > 0)
    attention reads Concat(rec[:, :, :total - W], window)

so tokens older than the last ``W`` are reconstructed from their features and the
window is exact. With ``absorb=true`` (the default) nothing is reconstructed: an attention
reading two such caches gets the bases folded into its query and output
(:mod:`genzip.passes.quant._cskv_absorb`), so a decode step reads the rank-r features
once; attentions that form cannot take keep the reconstruction (stat ``reconstructed``).
``A`` ``[D, r]`` is fitted per layer and K/V on the calibration set by layer-wise
reconstruction of the cached activations (``_cskv_layout.fit_basis``: the SVD of the
activations, not of the weights).

K is compressed after RoPE, as the exporter caches it: CSKV shrinks the pre-RoPE key
channels and re-applies RoPE after the reconstruction, which needs the rotary
subgraph moved behind the cache; post-RoPE keys have a flatter spectrum (RoPE
rotates each channel pair by a position-dependent angle), so at equal rank the
key error is larger, and the benchmark measures what that costs.

The features cover every token (the window's too, ``W · r`` extra values), so every
``past_key_values.{i}.X`` keeps the token count of the cache, and only ``_window``
slots are sized ``min(tokens, W)`` (the runtime reads the window from the layout).
Within one multi-token run the window is the run's last ``W`` tokens for every query
(decode, one token per run, is exact CSKV).

Invariant (fact ``kv-lowrank``, layout in :mod:`genzip.passes.quant._cskv_layout`):
every selected cache input holds ``r / kv_heads`` features per head and token beside
its ``[D, r]`` basis, its window (``W > 0``) and its scales (``int8``). A rank equal to
``D`` with ``window=0`` or a window longer than the sequence is the original model up
to float rounding. A graph with no cache update, or a cache already changed by
``kv-quant``/``cskv``, is a one-line error.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import onnx_ir as ir

from genzip.errors import GenzipError
from genzip.ir_build import NodeBuilder
from genzip.metadata import CSKV_KEY
from genzip.passes.infra.context import PassContext, calibration_need
from genzip.passes.infra.contract import GenzipPass, GenzipPassResult
from genzip.passes.quant import _calib_data as data_mod
from genzip.passes.quant import _cskv_absorb as absorb_mod
from genzip.passes.quant._cskv_layout import WINDOW_SUFFIX, fit_basis
from genzip.passes.quant._kv_layout import MIN_SCALE, QMAX, SCALE_SUFFIX
from genzip.passes.quant.kv_quant import PAST_PREFIX, cache_updates

_INT64_MAX = np.iinfo(np.int64).max
DEFAULT_RATIO = 0.5


@dataclasses.dataclass(frozen=True, kw_only=True)
class Options:
    """``rank``: features per token and K/V (a multiple of kv_heads), or ``ratio``: the
    fraction of the ``D`` channels kept (rounded up to a multiple of kv_heads); at most one
    of the two (neither: ``ratio=0.5``). ``window``: recent tokens kept at full precision (0: none). ``int8``: the
    features in int8 with one scale per head and token. ``absorb``: attention reads the
    features through bases folded into query and output instead of a rebuilt K/V (same
    result up to rounding). ``data``: calibration
    ``.npz``/``module:function`` (samples' ``input_ids``), else the compile's set."""

    rank: int | None = None
    ratio: float | None = None
    window: int = 0
    int8: bool = False
    absorb: bool = True
    data: str | None = None

    def __post_init__(self):
        if self.rank is not None and self.ratio is not None:
            raise ValueError("give one of rank=R or ratio=F, e.g. cskv{ratio=0.5}")
        if self.rank is None and self.ratio is None:
            object.__setattr__(self, "ratio", DEFAULT_RATIO)
        if self.rank is not None and self.rank < 1:
            raise ValueError(f"rank={self.rank} must be >= 1")
        if self.ratio is not None and not 0 < self.ratio <= 1:
            raise ValueError(f"ratio={self.ratio} must be in (0, 1]")
        if self.window < 0:
            raise ValueError(f"window={self.window} must be >= 0")

    def rank_for(self, width: int, kv_heads: int) -> int:
        rank = self.rank if self.rank is not None else math.ceil(self.ratio * width / kv_heads) * kv_heads
        if rank % kv_heads or rank > width:
            raise GenzipError(f"cskv: rank {rank} must be a multiple of kv_heads {kv_heads} and at most "
                              f"the cache width {width}", f"pass rank={kv_heads * max(1, rank // kv_heads)} "
                              "or a ratio")
        return rank


def _prefill_feeds(graph: ir.Graph, ids: np.ndarray) -> dict[str, np.ndarray]:
    """A prefill of ``ids`` ``[b, seq]`` from an empty cache."""
    ids = np.asarray(ids, np.int64).reshape(-1, np.shape(ids)[-1])
    b, seq = ids.shape
    feeds = {"input_ids": ids, "attention_mask": np.ones((b, seq), np.int64),
             "position_ids": np.broadcast_to(np.arange(seq, dtype=np.int64), (b, seq)).copy()}
    for value in graph.inputs:
        if (value.name or "").startswith(PAST_PREFIX):
            feeds[value.name] = np.zeros((b, value.shape[1], 0, value.shape[3]), np.float32)
    return {v.name: feeds[v.name] for v in graph.inputs if v.name in feeds}


def _activations(model: ir.Model, samples: list, names: list[str]) -> dict[str, np.ndarray]:
    """Each ``present`` output of a prefill over every calibration sample, as rows
    ``[tokens, D]`` (heads concatenated per token)."""
    from genzip.ort_session import make_session, session_source

    with session_source(model) as source:
        session = make_session(source)
    rows: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for sample in samples:
        if "input_ids" not in sample:
            raise GenzipError(f"cskv: a calibration sample has inputs {sorted(sample)} but no input_ids",
                              "give token windows as input_ids [samples, seq] (data=FILE.npz)")
        got = dict(zip(names, session.run(names, _prefill_feeds(model.graph, sample["input_ids"]))))
        for name, x in got.items():
            rows[name].append(x.transpose(0, 2, 1, 3).reshape(-1, x.shape[1] * x.shape[3]))
    return {n: np.concatenate(r) for n, r in rows.items()}


def _quantize(b: NodeBuilder, x: ir.Value) -> tuple[ir.Value, ir.Value]:
    """(int8 rows, float scale per row) of ``x``: ``kv-quant``'s per-head-token formula."""
    amax = b.op("ReduceMax", b.op("Abs", x), b.ints(-1), keepdims=1)
    scale = b.op("Max", b.op("Div", amax, b.const(QMAX, np.float32)), b.const(MIN_SCALE, np.float32))
    rounded = b.op("Round", b.op("Div", x, scale))
    clipped = b.op("Clip", rounded, b.const(-QMAX, np.float32), b.const(QMAX, np.float32))
    return b.op("Cast", clipped, to=ir.DataType.INT8), scale


def _cache_input(graph: ir.Graph, after: ir.Value, name: str, dtype: ir.DataType, dims: list) -> ir.Value:
    value = ir.Value(name=name, type=ir.TensorType(dtype), shape=ir.Shape(dims))
    graph.inputs.insert(list(graph.inputs).index(after) + 1, value)
    return value


def _initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    value = ir.Value(name=name, type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape(array.shape),
                     const_value=ir.tensor(array))
    graph.register_initializer(value)
    return value


def _to_heads(b: NodeBuilder, x: ir.Value, heads: int, last: int) -> ir.Value:
    """``[b, t, heads * last]`` -> ``[b, heads, t, last]``."""
    return b.op("Transpose", b.op("Reshape", x, b.ints(0, 0, heads, last)), perm=[0, 2, 1, 3])


def _from_heads(b: NodeBuilder, x: ir.Value, width: int) -> ir.Value:
    """``[b, heads, t, last]`` -> ``[b, t, heads * last]``."""
    return b.op("Reshape", b.op("Transpose", x, perm=[0, 2, 1, 3]), b.ints(0, 0, width))


def _rewrite(graph: ir.Graph, out: ir.Value, concat: ir.Node, basis: np.ndarray,
             opts: Options) -> tuple[dict, ir.Value, absorb_mod.LowRankCache]:
    """Rewrite one cache update; returns its layout slot, the value attention now reads,
    and what the absorbed form needs."""
    past, new = concat.inputs
    batch, kv_heads, past_seq, head_dim = past.shape
    width, rank = kv_heads * head_dim, basis.shape[1]
    feat_dim = rank // kv_heads
    b = NodeBuilder(f"{out.name}.cskv")
    down, up = (_initializer(graph, f"{out.name}.cskv_{n}", a)
                for n, a in (("basis", basis), ("basis_t", np.ascontiguousarray(basis.T))))
    feats = _to_heads(b, b.op("MatMul", _from_heads(b, new, width), down), kv_heads, feat_dim)
    slot = {"basis": down.name, "kv_heads": kv_heads, "head_dim": head_dim, "window_input": None,
            "scale_input": None}
    outputs = []
    if opts.int8:
        q, scale = _quantize(b, feats)
        scale_in = _cache_input(graph, past, past.name + SCALE_SUFFIX, ir.DataType.FLOAT,
                                [batch, kv_heads, past_seq, 1])
        present = b.op("Concat", past, q, axis=2)
        present_s = b.op("Concat", scale_in, scale, axis=2)
        cached = b.op("Mul", b.op("Cast", present, to=ir.DataType.FLOAT), present_s)
        outputs.append((present_s, out.name + SCALE_SUFFIX, ir.DataType.FLOAT, 1))
        slot["scale_input"] = scale_in.name
    else:
        present = cached = b.op("Concat", past, feats, axis=2)
    restored = _to_heads(b, b.op("MatMul", _from_heads(b, cached, rank), up), kv_heads, head_dim)
    used, window = restored, None
    if opts.window:
        window_in = _cache_input(graph, graph.inputs[list(graph.inputs).index(past) + int(opts.int8)],
                                 past.name + WINDOW_SUFFIX, ir.DataType.FLOAT, [batch, kv_heads, "past_window", head_dim])
        # Slice clamps: with fewer than W tokens the window is all of them, the old part empty.
        window = b.op("Slice", b.op("Concat", window_in, new, axis=2), b.ints(-opts.window),
                      b.ints(_INT64_MAX), b.ints(2))
        old = b.op("Slice", restored, b.ints(0), b.ints(-opts.window), b.ints(2))
        used = b.op("Concat", old, window, axis=2)
        outputs.append((window, out.name + WINDOW_SUFFIX, ir.DataType.FLOAT, head_dim))
        slot["window_input"] = window_in.name
    graph.insert_after(concat, b.nodes)
    past.dtype = ir.DataType.INT8 if opts.int8 else ir.DataType.FLOAT
    past.shape = ir.Shape([batch, kv_heads, past_seq, feat_dim])
    out_name, shape = out.name, out.shape
    position = list(graph.outputs).index(out)
    graph.outputs[position] = present
    for k, (value, *_) in enumerate(outputs):
        graph.outputs.insert(position + 1 + k, value)
    out.replace_all_uses_with(used)
    graph.remove(concat, safe=True)
    dims = list(shape) if shape is not None else [batch, kv_heads, "total_seq", head_dim]
    present.name, present.dtype = out_name, past.dtype
    present.shape = ir.Shape([*dims[:3], feat_dim])
    for value, name, dtype, last in outputs:
        value.name, value.dtype = name, dtype
        value.shape = ir.Shape([*dims[:2], "total_window" if last == head_dim else dims[2], last])
    return slot, used, absorb_mod.LowRankCache(cached, basis.T, window, kv_heads, head_dim, tuple(b.nodes))


def _absorb(graph: ir.Graph, lowrank: dict[ir.Value, absorb_mod.LowRankCache]) -> tuple[int, int]:
    """Fold the bases into every attention reading a low-rank K and V; (absorbed, kept)."""
    absorbed = kept = 0
    readers = {use.node for value in lowrank for use in value.uses()}
    for node in [n for n in graph if n in readers]:
        k, v = (node.inputs[i] if len(node.inputs) > i else None for i in (1, 2))
        if k in lowrank and v in lowrank and absorb_mod.why_not(node) is None:
            absorb_mod.rewrite(graph, node, lowrank[k], lowrank[v])
            absorbed += 1
        else:
            kept += 1
    return absorbed, kept


class CSKVPass(GenzipPass):
    name = "cskv"
    summary = ("low-rank KV cache (CSKV) on --kv-cache graphs: rank-r K/V features fitted on calibration "
               "activations, a full-precision window of recent tokens, optionally int8")
    Options = Options
    ensures_facts = frozenset({"kv-lowrank"})
    conflicts_facts = {"kv-int8": "kv-quant before it made the cache int8; run cskv{int8=true} instead"}

    def needs(self) -> frozenset[str]:
        return calibration_need(self.options.data)

    def run(self, model: ir.Model, context: PassContext) -> GenzipPassResult:
        opts: Options = self.options
        graph = model.graph
        if CSKV_KEY in model.metadata_props:
            raise GenzipError("cskv: the graph's KV cache is already low-rank (cskv ran twice?)", "run cskv once")
        updates = cache_updates(graph)
        if not updates:
            raise GenzipError("cskv: no cache update Concat(past_key_values.*, new) -> present.* in the graph",
                              "compile an LLM with --kv-cache (a transformers folder or preset)")
        for _, concat in updates:
            past = concat.inputs[0]
            if past.dtype != ir.DataType.FLOAT or past.shape is None or not all(
                    isinstance(past.shape[k], int) for k in (1, 3)):
                raise GenzipError(f"cskv: cache input '{past.name}' is not a float32 [batch, kv_heads, past, "
                                  "head_dim] cache (kv-quant ran first?)",
                                  "run cskv on the float --kv-cache graph; use cskv{int8=true} for int8")
        samples = data_mod.resolve(opts.data, context, self.name)
        context.report(f"cskv: fitting {len(updates)} low-rank caches on {len(samples)} calibration samples")
        acts = _activations(model, samples, [out.name for out, _ in updates])
        slots, errors, rank, lowrank = {}, {}, 0, {}
        for out, concat in updates:
            past = concat.inputs[0]
            kv_heads, head_dim = past.shape[1], past.shape[3]
            rank = opts.rank_for(kv_heads * head_dim, kv_heads)
            basis, errors[out.name] = fit_basis(acts[out.name], rank)
            slots[past.name], used, lowrank[used] = _rewrite(graph, out, concat, basis, opts)
        absorbed, reconstructed = _absorb(graph, lowrank) if opts.absorb else (0, len(lowrank))
        model.metadata_props[CSKV_KEY] = json.dumps(
            {"rank": rank, "window": opts.window, "int8": opts.int8, "slots": slots}, sort_keys=True)
        width = kv_heads * head_dim
        per_token = (rank + 4 * kv_heads) if opts.int8 else 4 * rank  # bytes per token and K/V
        stats = {"caches": len(slots), "rank": rank, "width": width, "window": opts.window, "int8": opts.int8,
                 "bytes_ratio": round(4 * width / per_token, 3),  # long-context limit, window aside
                 "max_calib_rel_error": round(max(errors.values()), 4),
                 "mean_calib_rel_error": round(float(np.mean(list(errors.values()))), 4),
                 "absorbed": absorbed, "reconstructed": reconstructed}
        return GenzipPassResult(model, True, stats)
