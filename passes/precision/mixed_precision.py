"""``mixed-precision{budget=avg-bits:B | memory:MB | latency:R objective=auto|METRIC plan=FILE}``:
choose one format per measured layer with the integer program of ``bit_allocation``
and write it as the precision annotations ``quant`` consumes.

Invariant after the pass (fact ``quant-annotated`` kept): every layer in
``genzip.sensitivity`` carries the ``genzip.quant`` spec ``annotate-precision`` would
write for its chosen format (``spec_for``; ``fp16`` = kept, reason ``plan fp16``),
the parameter-weighted weight bits of those layers are within the budget, and
``model.metadata_props["genzip.mixed_precision"]`` records the plan, the budget and
the average weight/activation bits (the artifact writer reports them). With
``plan=FILE`` the same plan is written as editable JSON for
``annotate-precision{plan=FILE}``.

Objective: ``auto`` sums each layer's cost under the metric of its group
(``sensitivity`` groups: MixDQ content vs quality layers), every metric divided by
its mean over the measured entries so the groups weigh alike; a metric name uses
that metric for every layer. Budgets: ``avg-bits`` bounds the parameter-weighted
mean weight bits; ``memory`` the weight megabytes (2^20 bytes) of these layers;
``latency`` a modeled GEMM time relative to all-fp16 (``LATENCY``: per-parameter
cost of each format on an int8/fp8 tensor-core GPU; a model, not a measurement).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx_ir as ir

from genzip.errors import GenzipError
from genzip.metadata import PRECISION_PLAN_KEY as PLAN_KEY
from genzip.passes.infra.context import PassContext
from genzip.passes.infra.contract import GenzipPass, GenzipPassResult
from genzip.passes.precision._bit_allocation import allocate
from genzip.passes.precision.sensitivity import RESULT_KEY
from genzip.passes.quant._formats import FORMATS
from genzip.passes.quant._plan import layer_keys, write_plan
from genzip.passes.quant._spec import META_KEY, QuantSpec, annotated_nodes
from genzip.passes.quant.annotate_precision import Options as AnnotateOptions
from genzip.passes.quant.annotate_precision import spec_for

LATENCY = {"fp16": 1.0, "w8a8": 0.5, "fp8": 0.5, "w4a8": 0.45, "w4a16": 0.8}
BUDGETS = ("avg-bits", "memory", "latency")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Options:
    budget: str = "avg-bits:6"
    objective: str = "auto"
    plan: str | None = None

    def __post_init__(self):
        kind, _, value = self.budget.partition(":")
        if kind not in BUDGETS:
            raise ValueError(f"budget '{self.budget}' must be avg-bits:B, memory:MB or latency:RATIO")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"budget '{self.budget}': '{value}' is not a number") from None
        if not number > 0:
            raise ValueError(f"budget '{self.budget}' must be positive")

    @property
    def budget_kind(self) -> str:
        return self.budget.partition(":")[0]

    @property
    def budget_value(self) -> float:
        return float(self.budget.partition(":")[2])


def cost_matrix(body: dict, objective: str) -> np.ndarray:
    """[layers, formats] cost under ``objective`` (NaN = format not allowed for that layer)."""
    layers, metrics = body["layers"], body["metrics"]
    if objective != "auto" and objective not in metrics:
        raise GenzipError(f"mixed-precision{{objective={objective}}}: sensitivity measured only {', '.join(metrics)}",
                          f"use objective=auto or one of {', '.join(metrics)}")
    group_of = {k: m for m, keys in body["groups"].items() for k in keys}
    out = np.full((len(layers), len(body["formats"])), np.nan)
    for m in metrics:
        rows = np.array([[np.nan if v is None else v for v in layer["cost"][m]] for layer in layers], dtype=np.float64)
        scale = np.nanmean(rows) if np.isfinite(rows).any() else 1.0
        rows = rows / (scale if scale > 0 else 1.0)
        for i, layer in enumerate(layers):
            if (objective == "auto" and group_of.get(layer["key"]) == m) or objective == m:
                out[i] = rows[i]
    return out


class MixedPrecisionPass(GenzipPass):
    name = "mixed-precision"
    summary = ("integer-program bit allocation from sensitivity under an avg-bits/memory/latency budget; "
               "writes annotations + plan")
    Options = Options
    requires_facts = frozenset({"quant-annotated", "sensitivity-measured"})
    ensures_facts = frozenset({"quant-annotated"})
    transforming = True

    def run(self, model: ir.Model, context: PassContext) -> GenzipPassResult:
        opts: Options = self.options
        raw = model.metadata_props.get(RESULT_KEY)
        if not raw:
            raise GenzipError("mixed-precision found no sensitivity results on the model", "put sensitivity before it")
        body = json.loads(raw)
        formats, layers = body["formats"], body["layers"]
        cost = cost_matrix(body, opts.objective)
        unmeasured = [layers[i]["key"] for i in np.flatnonzero(np.isnan(cost).all(axis=1))]
        if unmeasured:
            raise GenzipError(f"sensitivity has no {opts.objective} cost for layer '{unmeasured[0]}'",
                              "pick another objective (see the sensitivity stats 'unmeasured')")
        allowed = ~np.isnan(cost)
        params = np.array([layer["params"] for layer in layers], np.float64)
        bits = np.array([FORMATS[f].weight_bits for f in formats], np.float64)
        alloc = self._solve(params, formats, bits, np.nan_to_num(cost), allowed)
        by_key = layer_keys([n for n, _ in annotated_nodes(model)])
        plan = {layer["key"]: fmt for layer, fmt in zip(layers, alloc.formats)}
        modified = False
        for key, fmt in plan.items():
            modified |= self._annotate(by_key[key], fmt, int(body["block"]))
        act_bits = np.array([FORMATS[f].act_bits for f in alloc.formats], np.float64)
        summary = {"budget": opts.budget, "objective": opts.objective, "plan": plan,
                   "avg_weight_bits": round(alloc.avg_bits, 4),
                   "avg_activation_bits": round(float((params * act_bits).sum() / params.sum()), 4),
                   "weight_mb": round(alloc.avg_bits * float(params.sum()) / 8 / 2**20, 4)}
        model.metadata_props[PLAN_KEY] = json.dumps(summary, sort_keys=True, separators=(",", ":"))
        if opts.plan:
            write_plan(opts.plan, plan, {k: v for k, v in summary.items() if k != "plan"})
        counts = {f: alloc.formats.count(f) for f in formats}
        stats = {"layers": len(layers), **{f"n_{f}": n for f, n in counts.items()},
                 "avg_weight_bits": summary["avg_weight_bits"], "avg_activation_bits": summary["avg_activation_bits"],
                 "objective_value": round(alloc.objective, 6)}
        # The summary in metadata_props is always (re)written, so the model always changes.
        why = None if modified else (f"the allocation under {opts.budget} keeps every one of the {len(layers)} "
                                     f"layer(s) at the format it was annotated with")
        return GenzipPassResult(model, True, {**stats, "annotations_changed": modified}, noop_reason=why)

    def _solve(self, params, formats, bits, cost, allowed):
        opts: Options = self.options
        kind, value = opts.budget_kind, opts.budget_value
        if kind == "avg-bits":
            return allocate(params, formats, bits, cost, avg_bits=value, allowed=allowed)
        if kind == "memory":
            floor_bits = (params * np.where(allowed, bits[None, :], np.inf).min(axis=1)).sum()
            floor_mb = floor_bits / 8 / 2**20
            if value < floor_mb:
                raise GenzipError(f"budget memory:{value:g} is infeasible: the minimum achievable is {floor_mb:.4g} MB",
                                  f"raise the budget to at least {floor_mb:.4g}")
            return allocate(params, formats, bits, cost, avg_bits=value * 8 * 2**20 / params.sum(), allowed=allowed)
        latency = params[:, None] * np.array([LATENCY[f] for f in formats])[None, :]
        return allocate(params, formats, bits, cost, avg_bits=float(bits.max()), latency=latency,
                        latency_ratio=value, latency_base=float(params.sum() * LATENCY["fp16"]), allowed=allowed)

    @staticmethod
    def _annotate(node: ir.Node, fmt: str, block: int) -> bool:
        old = QuantSpec.from_json(node.metadata_props[META_KEY])
        scheme = FORMATS[fmt].scheme
        opts = AnnotateOptions(scheme=scheme or old.scheme, block=block)
        # BOS splitting needs a static activation quantizer (w8a8, w4a8, fp8).
        bos = old.bos  # quant and the sensitivity probe treat token 0 alike at every format
        spec = spec_for(node, old.module or "", opts, None if scheme else f"plan {fmt}", bos)
        raw = spec.to_json()
        changed = node.metadata_props.get(META_KEY) != raw
        node.metadata_props[META_KEY] = raw
        return changed
