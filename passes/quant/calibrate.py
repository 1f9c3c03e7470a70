"""``calibrate``: record the activation range of every statically quantized input.

Invariant after the pass (fact ``quant-calibrated``): every node whose
``genzip.quant`` spec has a static (non-dynamic) activation also carries
``metadata_props["genzip.quant.calib"]`` = ``{"amax": float > 0, "method": ...,
"samples": N}``, the clipping range of that activation measured by running the
annotated graph in ONNX Runtime over the calibration set (``quant_calib_data``
documents where the set comes from). For ``bos`` nodes token 0 (axis -2) is left
out of the statistics: it stays fp32. The graph itself is unchanged.

Methods: ``absmax`` (largest |x| seen), ``percentile`` (``percentile`` of |x| over a
sampled reservoir, capped by absmax) and ``mse`` (the clip minimising the int8
round-trip error over the reservoir). Results are cached by model hash plus
calibration-data hash, so recompiling the same model is free.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import sys
from typing import Literal

import numpy as np
import onnx_ir as ir
from tqdm import tqdm

from genzip.passes.infra.context import PassContext, calibration_need
from genzip.passes.infra.contract import GenzipPass, GenzipPassResult
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
        out.setdefault(name + ("#bos" if spec.bos else ""), []).append(node)
    return out


def _observe(model: ir.Model, keys: list[str], samples, method: str, percentile: float) -> dict[str, float]:
    from genzip.ort_session import make_session, session_source

    graph = model.graph
    by_name = {v.name: v for node in graph for v in node.outputs}
    by_name.update(graph.initializers)
    present = {v.name for v in graph.inputs} | {v.name for v in graph.outputs}
    # The probed tensors become graph outputs only while the session is created; the session
    # opens the model by path when it is large (external data), never as one protobuf.
    extra = [by_name[t] for t in sorted({k.split("#")[0] for k in keys} - present)]
    graph.outputs.extend(extra)
    try:
        with session_source(model) as source:
            session = make_session(source)
    finally:
        for value in extra:
            graph.outputs.remove(value)
    wanted = sorted({k.split("#")[0] for k in keys})
    amax = dict.fromkeys(keys, 0.0)
    pools: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    rng = np.random.default_rng(0)
    for feeds in tqdm(samples, desc="calibrate", unit="sample", file=sys.stderr, disable=None, leave=False):
        out = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
        got = {t: feeds[t] if t in feeds else out[t] for t in wanted}
        for key in keys:
            name, _, bos = key.partition("#")
            x = got[name]
            if bos and x.ndim >= 2:
                x = x[..., 1:, :]
            if x.size == 0:
                continue
            amax[key] = max(amax[key], float(np.max(np.abs(x))))
            if method != "absmax":
                pools[key].append(sample_abs(x, rng))
    result = {}
    for key in keys:
        values = np.concatenate(pools[key]) if pools[key] else np.zeros(0, np.float32)
        result[key] = max(activation_amax(method, amax[key], values, percentile), SCALE_FLOOR)
    return result


def _model_digest(model: ir.Model) -> str:
    """sha256 of the graph's text and every initializer's bytes, one tensor at a time
    (a model over 2 GB is never serialized whole)."""
    digest = hashlib.sha256(str(model.graph).encode())
    for name in sorted(model.graph.initializers):
        tensor = model.graph.initializers[name].const_value
        digest.update(name.encode())
        if tensor is not None:
            digest.update(f"{tensor.dtype}{list(tensor.shape)}".encode())
            digest.update(tensor.tobytes())
    return digest.hexdigest()


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
        targets = _targets(model)
        if not targets:
            return GenzipPassResult(model, False, {"calibrated": 0})
        samples = data_mod.resolve(opts.data, context, self.name)
        if opts.samples:
            samples = samples[: opts.samples]
        data_mod.check_feeds(model, samples)
        mhash = _model_digest(model)
        dhash = data_mod.data_hash(samples)
        method = opts.method if opts.method != "percentile" else f"percentile{opts.percentile:g}"
        path = data_mod.cache_path(opts.cache, mhash, dhash, method)
        keys = sorted(targets)
        cached = data_mod.read_cache(path, mhash, dhash) if opts.use_cache else None
        if cached is not None and set(cached.get("amax", {})) == set(keys):
            amax, hit = {k: float(v) for k, v in cached["amax"].items()}, True
            logger.info("calibrate: cache hit %s", path)
        else:
            logger.info("calibrate: %d samples, %d tensors (%s)", len(samples), len(keys), method)
            amax, hit = _observe(model, keys, samples, opts.method, opts.percentile), False
            if opts.use_cache:
                data_mod.write_cache(path, {"model": mhash, "data": dhash, "method": method, "amax": amax})
        for key, nodes in targets.items():
            raw = json.dumps({"amax": amax[key], "method": method, "samples": len(samples)}, sort_keys=True)
            for node in nodes:
                node.metadata_props[CALIB_KEY] = raw
        stats = {"calibrated": sum(map(len, targets.values())), "tensors": len(keys), "samples": len(samples),
                 "cache": "hit" if hit else "miss", "data_hash": dhash[:12]}
        return GenzipPassResult(model, True, stats)
