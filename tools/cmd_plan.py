"""``genzip plan ARTIFACT --delta D --steps S --cfg G [--calib FILE] --out plan.json``.

DiTFastAttn greedy search (``genzip.searches.ditfastattn``) on calibration conditions:
``--calib`` is an ``.npz`` with ``prompt_embeds`` (and ``negative_prompt_embeds``)
for a text DiT, or ``class_labels`` (int64 [B]; unconditional half: the null class)
for a class-conditional DiT (or ``--labels 1,500``), else ``--conditions N`` (default 4)
seeded random conditions searched together as one batch: distinct class labels, or
random prompt embeddings against zero negatives (DiTFastAttn calibrates on several
prompts; one condition overfits the plan to it). Writes the plan, a layer x step heatmap PNG (``--heatmap``, default: the
plan path with ``.png``), and prints the method counts, attention FLOPs saved and
the search cost.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from genzip.errors import GenzipError
from genzip.tools.cli_common import add_dist_flags, search_executor


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact", help="a share-attn artifact")
    p.add_argument("--delta", type=float, default=0.05, help="loss threshold δ (layer i accepts loss < δ(i+1)/L)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=4.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scheduler", default=None,
                   help="dpm (DPM-Solver++ multistep) or flow-euler, on the model's noise schedule when the artifact "
                        "ships its pipeline's scheduler_config.json (default: that scheduler itself, else dpm with "
                        "diffusers' defaults)")
    p.add_argument("--calib", help=".npz of calibration prompt_embeds [B,T,C] (and negative_prompt_embeds), "
                   "or class_labels [B] for a class-conditional DiT")
    p.add_argument("--labels", help="class-conditional DiT: comma-separated calibration class labels")
    p.add_argument("--conditions", type=int, default=4,
                   help="without --calib/--labels: how many seeded random conditions to calibrate on (default 4)")
    p.add_argument("--loss", default="dfa", help="dfa (DiTFastAttn relative error, default) or rel-l1")
    p.add_argument("--out", required=True, help="plan JSON to write")
    p.add_argument("--heatmap", help="PNG path (default: OUT with .png)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true")
    add_dist_flags(p)


def run(args: argparse.Namespace) -> int:
    from genzip.runtime import _eval_data
    from genzip.runtime.model import PlannedModel
    from genzip.runtime.plan import SHORT
    from genzip.searches.ditfastattn import flops_saved, greedy_search, heatmap, plan_flops
    from genzip.tools.cli_common import Progress
    from genzip.tools.cmd_sample import conditioning

    if args.steps < 1:
        raise GenzipError(f"--steps {args.steps} must be >= 1", "pass a positive step count")
    if args.conditions < 1:
        raise GenzipError(f"--conditions {args.conditions} must be >= 1", "pass a positive count")
    model = PlannedModel(args.artifact, threads=args.threads)
    cond, uncond = conditioning(model, args.calib, args.conditions, args.seed, args.labels, distinct=True)
    say = Progress(not args.quiet)
    bound = 1 + (args.steps - 1) * (4 * max(model.layers, 1) + 2)
    say(f"searching {args.steps} steps x {model.layers} layers on {len(cond)} conditions, delta {args.delta}, "
        f"at most {bound} calls")

    def progress(t, steps, methods, calls):
        say(f"step {t + 1}/{steps}: {calls} calls; methods " + " ".join(SHORT[m] for m in methods))

    # trained-dit samples (genzip eval) with its training noise schedule; search on the same one.
    schedule = None
    if args.scheduler in (None, "dpm") and _eval_data.trained_preset(model.manifest) in _eval_data.DIT_PRESETS:
        schedule = _eval_data.dit_schedule()
    with search_executor(args) as executor:  # the candidates of one (layer, step) on Ray workers
        result = greedy_search(model, cond, uncond, delta=args.delta, steps=args.steps, cfg=args.cfg,
                               seed=args.seed, scheduler=args.scheduler, loss=args.loss, progress=progress,
                               scheduler_config=schedule, executor=executor)
    result.plan.save(args.out)
    png = args.heatmap or os.path.splitext(args.out)[0] + ".png"
    heatmap(result.plan, png, f"{os.path.basename(args.artifact)} delta={args.delta}")
    used, baseline = plan_flops(model, result.plan)
    summary = {
        "plan": args.out, "heatmap": png, "delta": args.delta, "loss": args.loss, "steps": args.steps, "layers": model.layers,
        "conditions": len(cond),
        "methods": result.plan.counts(), "calls": result.calls, "max_calls": result.max_calls,
        "attn_flops_full": baseline, "attn_flops_plan": used,
        "attn_flops_saved": flops_saved(model, result.plan),
    }
    if args.json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    else:
        counts = ", ".join(f"{k} {v}" for k, v in summary["methods"].items() if v)
        sys.stdout.write(f"plan -> {args.out} ({counts}); attention FLOPs saved "
                         f"{100 * summary['attn_flops_saved']:.1f}%; {result.calls} calls "
                         f"(bound {result.max_calls}); heatmap -> {png}\n")
    return 0
