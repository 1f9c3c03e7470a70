"""The artifact's mixed-precision section: what ``sensitivity`` and ``mixed-precision``
left in ``model.metadata_props``, turned into files a person reads.

* ``precision_plan.json``: the plan (``annotate-precision{plan=FILE}`` loads it back);
* ``precision_bits.png``: weight bits per layer in graph order, coloured by format;
* ``genzip.json`` ``mixed_precision``: budget, objective, average weight and
  activation bits (parameter-weighted over the allocated layers), format counts;
* ``report.md``: those numbers plus the sensitivity table (one row per layer, one
  column per metric and format; ``sqnr`` shown as SQNR in dB, higher is better).

Nothing is written when neither pass ran. The PNG carries no software/version
metadata, so equal plans give equal file hashes.
"""

from __future__ import annotations

import json
import os
from typing import Any

import onnx_ir as ir

from genzip.passes.precision._metrics import sqnr_db
from genzip.passes.precision.mixed_precision import PLAN_KEY
from genzip.passes.precision.sensitivity import RESULT_KEY
from genzip.passes.quant._formats import FORMATS
from genzip.passes.quant._plan import write_plan

PLAN_FILE = "precision_plan.json"
PLOT_FILE = "precision_bits.png"


def _plot(path: str, plan: dict[str, str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(plan)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.12 * len(keys)), 3.2), dpi=100)
    colors = plt.get_cmap("tab10")
    for i, fmt in enumerate(FORMATS):
        xs = [j for j, k in enumerate(keys) if plan[k] == fmt]
        if xs:
            ax.bar(xs, [FORMATS[fmt].weight_bits] * len(xs), color=colors(i), label=fmt, width=0.8)
    ax.set_xlabel("layer (graph order)")
    ax.set_ylabel("weight bits")
    ax.set_yticks(sorted({f.weight_bits for f in FORMATS.values()}))
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None})
    plt.close(fig)


def _cell(metric: str, value) -> str:
    if value is None:
        return "—"
    return f"{sqnr_db(value):.1f}" if metric == "sqnr" else f"{value:.3g}"


def sensitivity_table(body: dict[str, Any], plan: dict[str, str] | None) -> list[str]:
    formats, metrics = body["formats"], body["metrics"]
    group_of = {k: m for m, keys in body["groups"].items() for k in keys}
    head = ["layer", "params", "metric group", *(f"{m} {f}" for m in metrics for f in formats)]
    if plan:
        head.append("chosen")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for layer in body["layers"]:
        cells = [f"`{layer['key']}`", str(layer["params"]), group_of.get(layer["key"], "")]
        cells += [_cell(m, layer["cost"][m][i]) for m in metrics for i in range(len(formats))]
        if plan:
            cells.append(plan.get(layer["key"], ""))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def artifact_section(model: ir.Model, folder: str) -> tuple[dict[str, Any] | None, list[str], list[str]]:
    """(manifest section or None, report.md lines, file names written into ``folder``)."""
    raw_plan, raw_sens = model.metadata_props.get(PLAN_KEY), model.metadata_props.get(RESULT_KEY)
    if not raw_plan and not raw_sens:
        return None, [], []
    summary = json.loads(raw_plan) if raw_plan else None
    body = json.loads(raw_sens) if raw_sens else None
    section: dict[str, Any] = {}
    lines = ["", "## Mixed precision", ""]
    files: list[str] = []
    if summary:
        plan = summary["plan"]
        write_plan(os.path.join(folder, PLAN_FILE), plan, {k: v for k, v in summary.items() if k != "plan"})
        _plot(os.path.join(folder, PLOT_FILE), plan)
        files += [PLAN_FILE, PLOT_FILE]
        counts = {f: list(plan.values()).count(f) for f in FORMATS if f in plan.values()}
        fields = ("budget", "objective", "avg_weight_bits", "avg_activation_bits", "weight_mb")
        section = {k: summary[k] for k in fields}
        section.update({"formats": counts, "plan_file": PLAN_FILE, "bits_plot": PLOT_FILE})
        lines += [f"- budget `{summary['budget']}`, objective `{summary['objective']}`",
                  f"- average weight bits {summary['avg_weight_bits']}, average activation bits "
                  f"{summary['avg_activation_bits']} (parameter-weighted over {len(plan)} allocated layers)",
                  "- formats: " + ", ".join(f"{f} × {n}" for f, n in counts.items()),
                  f"- plan: `{PLAN_FILE}` (load with `annotate-precision{{plan=FILE}}`); bits per layer: `{PLOT_FILE}`",
                  "", f"![weight bits per layer]({PLOT_FILE})"]
    if body:
        section["sensitivity"] = {"metrics": body["metrics"], "formats": body["formats"], "samples": body["samples"]}
        lines += ["", f"### Sensitivity ({body['samples']} calibration samples; sqnr in dB, higher is better; "
                  "content = 1 − cos of low-passed outputs, kl = logit KL, grad = |gᵀ(W − Q(W))|: "
                  "lower is better)", ""]
        lines += sensitivity_table(body, summary["plan"] if summary else None)
    return section, lines, files
