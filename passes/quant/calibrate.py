"""``calibrate``: record the activation range of every statically quantized input.

Invariant after the pass (fact ``quant-calibrated``): every node whose
``genzip.quant`` spec has a static (non-dynamic) activation also carries
``metadata_props["genzip.quant.calib"]`` = ``{"amax": float > 0, "method": ...,
"samples": N}``, the clipping range of that activation measured by running the
annotated graph in ONNX Runtime over the calibration set (``quant_calib_data``
documents where the set comes from). For ``bos`` nodes token 0 (axis -2) is left
out of the statistics, and (static or dynamic) they also get ``bos_row`` (token 0's
mean activation over the set, float32 base64) and ``bos_spread`` (the largest
relative distance of any sample's token 0 from that mean): ``quant`` precomputes
token 0's output from the row when the spread says token 0 is prompt-invariant
(MixDQ: CLIP's BOS), and refuses ``bos`` otherwise. The graph itself is unchanged.

Methods: ``absmax`` (largest |x| seen), ``percentile`` (``percentile`` of |x| over a
sampled reservoir, capped by absmax) and ``mse`` (the clip minimising the int8
round-trip error over the reservoir). Results are cached by model hash plus
calibration-data hash, so recompiling the same model is free.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from typing import Any, Literal

import numpy as np
import onnx_ir as ir
from tqdm import tqdm

from genzip.passes.infra.context import PassContext, calibration_need
from genzip.passes.infra.contract import GenzipPass, GenzipPassResult
from genzip.passes.quant import _bos as bos_mod
from genzip.passes.quant import _calib_data as data_mod
from genzip.passes.quant._scales import SCALE_FLOOR, activation_amax, sample_abs
from genzip.passes.quant._spec import CALIB_KEY, annotated_nodes

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Options:
    samples: int = 0  # 0 = every sample of the set
    method: Literal["absmax", "percentile", "mse"] = "absmax"
    percentile: float = 99.99
    data: str | None = None
    cache: str | None = None
    use_cache: bool = True

    def __post_init__(self):
        if self.samples < 0:
            raise ValueError(f"samples={self.samples} must be >= 0 (0 = all)")
        if not 50.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile={self.percentile} must be in (50, 100]")


def _targets(model: ir.Model) -> dict[str, list[ir.Node]]:
    """Statistic key ('tensor' or 'tensor#bos') -> the nodes reading that range."""
    out: dict[str, list[ir.Node]] = {}
    for node, spec in annotated_nodes(model):
        act = spec.activation
        if spec.keep is not None or act is None or act.dynamic:
            continue
        name = node.inputs[act.input].name
        out.setdefault(bos_mod.range_key(name, spec.bos), []).append(node)
    return out


def _bos_targets(model: ir.Model) -> dict[str, list[ir.Node]]:
    """Tensor -> the ``bos`` nodes reading it (static or dynamic): their token 0 is observed."""
    out: dict[str, list[ir.Node]] = {}
    for node, spec in annotated_nodes(model):
        if spec.keep is None and spec.bos:
            out.setdefault(node.inputs[0].name, []).append(node)  # bos is MatMul only: input 0
    return out


def _observe(model: ir.Model, keys: list[str], bos_tensors: list[str], samples, method: str,
             percentile: float) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
    """(range per key, token-0 statistics per ``bos`` tensor) over ``samples``."""
    wanted = sorted({bos_mod.key_tensor(k) for k in keys} | set(bos_tensors))
    session = data_mod.probe_session(model, wanted)
    amax = dict.fromkeys(keys, 0.0)
    pools: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    rows: dict[str, list[np.ndarray]] = {t: [] for t in bos_tensors}
    rng = np.random.default_rng(0)
    for feeds in tqdm(samples, desc="calibrate", unit="sample", file=sys.stderr, disable=None, leave=False):
        out = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
        got = {t: feeds[t] if t in feeds else out[t] for t in wanted}
        for t in bos_tensors:
            x = got[t]
            rows[t].append(x[..., 0, :].reshape(-1, x.shape[-1]))
        for key in keys:
            x = bos_mod.ranged_values(key, got[bos_mod.key_tensor(key)])
            if x.size == 0:
                continue
            amax[key] = max(amax[key], float(np.max(np.abs(x))))
            if method != "absmax":
                pools[key].append(sample_abs(x, rng))
    result = {}
    for key in keys:
        values = np.concatenate(pools[key]) if pools[key] else np.zeros(0, np.float32)
        result[key] = max(activation_amax(method, amax[key], values, percentile), SCALE_FLOOR)
    return result, {t: bos_mod.token0_stats(r) for t, r in rows.items()}


class CalibratePass(GenzipPass):
    name = "calibrate"
    summary = "run the annotated graph in ORT over calibration inputs; record activation ranges (cached)"
    Options = Options
    requires_facts = frozenset({"quant-annotated"})
    ensures_facts = frozenset({"quant-calibrated"})

    def needs(self) -> frozenset[str]:
        return calibration_need(self.options.data)

    def run(self, model: ir.Model, context: PassContext) -> GenzipPassResult:
        opts: Options = self.options
        targets, bos_targets = _targets(model), _bos_targets(model)
        if not targets and not bos_targets:
            return GenzipPassResult(model, False, {"calibrated": 0})
        samples = data_mod.resolve(opts.data, context, self.name)
        if opts.samples:
            samples = samples[: opts.samples]
        data_mod.check_feeds(model, samples)
        mhash = data_mod.model_hash(model)
        dhash = data_mod.data_hash(samples)
        method = opts.method if opts.method != "percentile" else f"percentile{opts.percentile:g}"
        path = data_mod.cache_path(opts.cache, mhash, dhash, method)
        keys, bos_keys = sorted(targets), sorted(bos_targets)
        cached = data_mod.read_cache(path, mhash, dhash) if opts.use_cache else None
        if (cached is not None and set(cached.get("amax", {})) == set(keys)
                and set(cached.get("bos", {})) == set(bos_keys)):
            amax, bos, hit = {k: float(v) for k, v in cached["amax"].items()}, cached.get("bos", {}), True
            logger.info("calibrate: cache hit %s", path)
        else:
            logger.info("calibrate: %d samples, %d tensors (%s)", len(samples), len(keys), method)
            (amax, bos), hit = _observe(model, keys, bos_keys, samples, opts.method, opts.percentile), False
            if opts.use_cache:
                data_mod.write_cache(path, {"model": mhash, "data": dhash, "method": method, "amax": amax, "bos": bos})
        records: dict[int, dict[str, Any]] = {}
        for key, nodes in targets.items():
            for node in nodes:
                records[id(node)] = {"amax": amax[key], "method": method, "samples": len(samples)}
        for tensor, nodes in bos_targets.items():
            for node in nodes:
                records.setdefault(id(node), {"samples": len(samples)}).update(bos[tensor])
        for node in [n for group in (*targets.values(), *bos_targets.values()) for n in group]:
            node.metadata_props[CALIB_KEY] = json.dumps(records[id(node)], sort_keys=True)
        stats = {"calibrated": sum(map(len, targets.values())), "tensors": len(keys), "samples": len(samples),
                 "bos_tensors": len(bos_keys),
                 "cache": "hit" if hit else "miss", "data_hash": dhash[:12]}
        return GenzipPassResult(model, True, stats)
