"""``sensitivity``: measure, per candidate layer and format, how much quantizing that
layer alone (everything else FP) changes the model output on calibration inputs.

Invariant after the pass (fact ``sensitivity-measured``): ``model.metadata_props
["genzip.sensitivity"]`` holds JSON ``{"version": 1, "formats": [...], "metrics": [...],
"family", "groups": {metric: [layer keys]}, "samples", "layers": [{"key", "node", "op",
"params", "cost": {metric: [one value per format, null = not allowed]}}]}`` for every
layer ``annotate-precision`` marked quantizable (``keep`` null). The graph is unchanged.

Metrics are decoupled and reported separately (``sensitivity_metrics``): diffusion
models get ``sqnr`` (quality) and ``content`` (low-pass structure), with layers
matching ``content-layers`` (MixDQ: cross-attention and FFN) assigned to content and
the rest to quality; LLMs get ``kl`` of the logits and LLM-MQ's ``grad`` when the
PyTorch source is at hand. Runs: L × F × samples in one gated ORT session
(``sensitivity_probe``), with a tqdm bar (ETA) on stderr; results are cached
(``sensitivity_cache``), so a re-run costs no model evaluation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator

import numpy as np
import onnx_ir as ir
from tqdm import tqdm

from genzip.errors import GenzipError
from genzip.metadata import SENSITIVITY_KEY as RESULT_KEY
from genzip.ort_session import is_large, session_source
from genzip.parallel import SerialExecutor
from genzip.passes.infra.context import TORCH_MODULE, PassContext, calibration_need
from genzip.passes.infra.contract import GenzipPass, GenzipPassResult
from genzip.passes.infra.module_paths import module_path
from genzip.passes.precision import _cache as cache_mod
from genzip.passes.precision import _metrics as metrics_mod
from genzip.passes.precision import _probe as probe
from genzip.passes.precision._grad import as_module, first_order
from genzip.passes.quant import _calib_data as data_mod
from genzip.passes.quant._bos import range_key
from genzip.passes.quant._formats import FORMATS, fake_weight
from genzip.passes.quant._plan import layer_keys
from genzip.passes.quant._spec import annotated_nodes, spec_of

logger = logging.getLogger(__name__)
DEFAULT_CONTENT = r"(^|\.)(attn2|ff)(\.|$)"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Options:
    candidates: tuple[str, ...] = ("w8a8", "w4a16", "w4a8", "fp8", "fp16")
    metrics: tuple[str, ...] = ("auto",)
    samples: int = 2  # calibration samples per run, spread evenly over the set
    content_layers: str = DEFAULT_CONTENT
    block: int = 32
    data: str | None = None
    cache: str | None = None
    use_cache: bool = True

    def __post_init__(self):
        bad = [c for c in self.candidates if c not in FORMATS]
        if bad or not self.candidates or len(set(self.candidates)) != len(self.candidates):
            raise ValueError(f"candidates must be distinct formats from {', '.join(FORMATS)}, "
                             f"got {','.join(self.candidates)}")
        if self.metrics != ("auto",) and (not self.metrics or any(m not in metrics_mod.METRICS for m in self.metrics)):
            raise ValueError(f"metrics must be auto or from {', '.join(metrics_mod.METRICS)}, "
                             f"got {','.join(self.metrics)}")
        if self.samples < 1:
            raise ValueError(f"samples={self.samples} must be >= 1")
        if self.block not in (16, 32, 64, 128, 256):
            raise ValueError(f"block={self.block} must be one of 16, 32, 64, 128, 256")
        try:
            re.compile(self.content_layers)
        except re.error as e:
            raise ValueError(f"bad regex '{self.content_layers}': {e}") from None


def _pick(samples: list, n: int) -> list:
    """``n`` samples spread evenly (DiT sets are ordered by timestep)."""
    if n >= len(samples):
        return samples
    return [samples[i] for i in np.linspace(0, len(samples) - 1, n).round().astype(int)]


@contextlib.contextmanager
def _private_copy(model: ir.Model) -> Iterator[ir.Model]:
    """A copy of ``model`` to rewrite. A small model goes through one in-memory protobuf; a
    large one is saved with external data to a temporary folder and loaded back, so the
    copy's weights are read lazily from that file, never held twice in memory nor
    serialized into one protobuf (which cannot exceed 2 GB)."""
    if not is_large(model):
        yield ir.from_proto(ir.to_proto(model))
        return
    with tempfile.TemporaryDirectory(prefix="genzip-sensitivity-") as tmp:
        path = os.path.join(tmp, "model.onnx")
        ir.save(model, path, external_data="model.onnx.data")
        yield ir.load(path)


class SensitivityPass(GenzipPass):
    name = "sensitivity"
    summary = "per-layer, per-format output change (decoupled metrics) of quantizing one layer alone; cached"
    Options = Options
    requires_facts = frozenset({"quant-annotated"})
    ensures_facts = frozenset({"sensitivity-measured"})

    def needs(self) -> frozenset[str]:
        grad = frozenset({TORCH_MODULE}) if "grad" in self.options.metrics else frozenset()
        return calibration_need(self.options.data) | grad

    def run(self, model: ir.Model, context: PassContext) -> GenzipPassResult:
        opts: Options = self.options
        annotated = annotated_nodes(model)
        keys = {id(n): k for k, n in layer_keys([n for n, _ in annotated]).items()}
        nodes = list(model.graph)
        position = {id(n): i for i, n in enumerate(nodes)}
        layers = [n for n, s in annotated if s.keep is None]
        if not layers:
            return GenzipPassResult(model, False, {"layers": 0})
        samples = _pick(data_mod.resolve(opts.data, context, self.name), opts.samples)
        data_mod.check_feeds(model, samples)
        model.metadata_props.pop(RESULT_KEY, None)  # never part of the cache key
        out_name = model.graph.outputs[0].name
        module = as_module(context.torch_module)
        metrics, fam = self._metrics(model, samples, module)
        settings = {"formats": list(opts.candidates), "metrics": list(metrics), "samples": len(samples),
                    "block": opts.block}
        mhash, dhash, shash = data_mod.model_hash(model), data_mod.data_hash(samples), cache_mod.settings_hash(settings)
        path = cache_mod.cache_file(opts.cache, mhash, dhash, shash)
        cached = cache_mod.read(path, mhash, dhash, shash) if opts.use_cache else None
        names = [keys[id(n)] for n in layers]
        if cached is not None and cached.get("keys") == names:
            cost, runs, hit = cached["cost"], 0, True
            logger.info("sensitivity: cache hit %s", path)
        else:
            positions = [position[id(n)] for n in layers]
            cost, runs = self._measure(model, positions, layers, samples, metrics, out_name, module, context.executor)
            hit = False
            if opts.use_cache:
                entry = {"model": mhash, "data": dhash, "settings": shash, "keys": names, "cost": cost}
                cache_mod.write_cache(path, entry)
        content_re = re.compile(opts.content_layers)
        groups = self._groups(fam, metrics, names, [module_path(n) or n.name or "" for n in layers], content_re)
        body = {"version": 1, "formats": list(opts.candidates), "metrics": list(metrics), "family": fam,
                "samples": len(samples), "groups": groups, "block": opts.block,
                "layers": [{"key": k, "node": n.name, "op": n.op_type, "params": int(n.inputs[1].const_value.size),
                            "cost": {m: cost[m][i] for m in metrics}} for i, (k, n) in enumerate(zip(names, layers))]}
        model.metadata_props[RESULT_KEY] = json.dumps(body, sort_keys=True, separators=(",", ":"))
        # Layers with no value at all under some metric (grad: no matching torch Linear).
        missing = sum(1 for m in metrics for row in cost[m] if all(v is None for v in row))
        stats = {"layers": len(layers), "formats": len(opts.candidates), "metrics": ",".join(metrics),
                 "samples": len(samples), "runs": runs, "cache": "hit" if hit else "miss", "unmeasured": missing}
        return GenzipPassResult(model, True, stats)

    def _metrics(self, model: ir.Model, samples, module) -> tuple[tuple[str, ...], str]:
        out = model.graph.outputs[0]
        rank = len(out.shape) if out.shape is not None else 0
        fam = metrics_mod.family(rank, out.name or "")
        has_torch = fam == "llm" and "input_ids" in samples[0] and module is not None
        metrics = self.options.metrics
        if metrics == ("auto",):
            metrics = metrics_mod.auto_metrics(fam, has_torch)
        for m in metrics:
            why = metrics_mod.applicable(m, rank, out.name or "") if m != "grad" else None
            if m == "grad" and (module is None or "input_ids" not in samples[0]):
                why = ("grad needs the PyTorch source of a causal LM "
                       "(a model genzip exported, or PassContext.torch_module)")
            if why:
                raise GenzipError(f"sensitivity{{metrics={m}}}: {why}", "pick metrics that fit this model's output")
        return tuple(metrics), fam

    @staticmethod
    def _groups(fam: str, metrics, names: list[str], paths: list[str], content_re) -> dict[str, list[str]]:
        """Which metric each layer's allocation cost uses (MixDQ: attn2 and FFN -> content)."""
        if fam == "diffusion" and "content" in metrics and "sqnr" in metrics:
            content = [k for k, p in zip(names, paths) if content_re.search(p)]
            return {"content": content, "sqnr": [k for k in names if k not in set(content)]}
        return {metrics[0]: list(names)}

    def _measure(self, model: ir.Model, positions, layers, samples, metrics, out_name, module, executor):
        opts: Options = self.options
        formats = list(opts.candidates)
        bos = frozenset(li for li, n in enumerate(layers) if n.op_type == "MatMul" and spec_of(n).bos)
        acts = sorted({range_key(n.inputs[0].name, li in bos) for li, n in enumerate(layers)})
        amax, refs = probe.activation_amax(model, acts, samples)
        ref_out = [r[out_name] for r in refs]
        out_metrics = [m for m in metrics if m != "grad"]
        cost = {m: [[None] * len(formats) for _ in layers] for m in metrics}
        todo = [(li, f) for li, n in enumerate(layers) for f in formats if probe.allowed(n.op_type, f)]
        if out_metrics:
            with _private_copy(model) as gated:
                gates = probe.build_gated(gated, positions, formats, amax, opts.block, bos)
                with session_source(gated) as source:  # bytes, or a path when large
                    values = self._sweep(executor, source, gates, samples, ref_out, out_name, out_metrics, todo)
            for (li, f), row in zip(todo, values):
                for m, v in zip(out_metrics, row):
                    cost[m][li][formats.index(f)] = v
        runs = len(todo) * len(samples) if out_metrics else 0
        if "grad" in metrics:
            self._grad(cost["grad"], layers, formats, samples, module)
        return cost, runs

    @staticmethod
    def _sweep(executor, gated: bytes | str, gates, samples, ref_out, out_name, out_metrics, todo) -> list[list[float]]:
        """One unit per (layer, format), in ``todo`` order, on ``executor``'s workers
        (``genzip.parallel``; None: this process, ORT's default threads)."""
        bar = tqdm(total=len(todo), desc="sensitivity", unit="run", file=sys.stderr, disable=None, leave=False)
        start, step = time.perf_counter(), max(1, len(todo) // 10)

        def progress(done: int, total: int) -> None:
            bar.update(1)
            if done % step == 0:  # the tqdm bar shows only on a TTY; logs carry the ETA too
                spent = time.perf_counter() - start
                logger.info("sensitivity: %d/%d layer-format runs, %.0f s, ETA %.0f s",
                            done, total, spent, spent / done * (total - done))

        executor = executor or SerialExecutor()
        try:
            with executor.pool(probe.ProbeWorker, gated, gates, samples, ref_out, out_name, out_metrics) as pool:
                return pool.map("measure", todo, progress=progress)
        finally:
            bar.close()

    def _grad(self, rows, layers, formats, samples, module) -> None:
        weights, errors = [], []
        for n in layers:
            w = n.inputs[1].const_value.numpy().astype(np.float32)
            trans_b = n.op_type == "Gemm" and bool(n.attributes.get_int("transB", 0))
            weights.append((module_path(n), w))
            errors.append({f: w - fake_weight(w, n.op_type, trans_b, f, self.options.block)
                           for f in formats if probe.allowed(n.op_type, f)})
        for li, est in enumerate(first_order(module, weights, errors, samples)):
            if est is not None:
                rows[li] = [est.get(f) for f in formats]
