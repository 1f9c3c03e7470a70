"""``python benchmarks/bench_share.py``: attention sharing (+ W8A8) end to end, measured in one run.

    python benchmarks/bench_share.py FP32_ARTIFACT --plan plan.json [--quant QUANT_ARTIFACT] [--quant-full] [--json]

Runs, interleaved per round (``--repeat`` rounds; medians and minima reported), the same seeded CFG
sampling with:

* ``fp32-full``: the FP32 share-attn artifact under the all-full plan (equal to the
  artifact without share-attn, see the exactness tests): the baseline;
* ``fp32-plan``: the FP32 artifact under ``--plan``;
* ``quant-plan``: ``--quant``, a share-attn artifact compiled with ``quant`` before
  ``share-attn``, under the same plan (and ``quant-full``, all-full, with ``--quant-full``).

For each: latency, ratio ``fp32-full / variant``, and PSNR of its final latents vs the
``fp32-full`` latents (``genzip sample``'s definition: peak = the reference's range).
Also the plan's attention FLOPs saved and the load average before and after, since
timings on a shared machine move with it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import _common

from genzip.errors import GenzipError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact", help="FP32 share-attn artifact (baseline and plan)")
    p.add_argument("--plan", required=True, help="plan JSON (genzip plan)")
    p.add_argument("--quant", help="share-attn artifact compiled with quant{...} before share-attn")
    p.add_argument("--quant-full", action="store_true", help="also time the quantized artifact all-full")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=4.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scheduler", default="dpm", help="dpm or flow-euler")
    p.add_argument("--repeat", type=int, default=1, help="interleaved rounds (medians reported)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    from genzip.runtime.model import PlannedModel
    from genzip.runtime.plan import Plan, load_plan
    from genzip.runtime.sampler import default_conditioning, interleaved
    from genzip.searches.ditfastattn import flops_saved
    from genzip.tools.cli_common import Progress
    from genzip.tools.cmd_sample import psnr

    if args.repeat < 1:
        raise GenzipError(f"--repeat {args.repeat} must be >= 1", "pass a positive round count")
    if args.quant_full and not args.quant:
        raise GenzipError("--quant-full needs --quant", "pass --quant QUANT_ARTIFACT")
    plan = load_plan(args.plan)
    full_plan = Plan.all_full(plan.steps, plan.layers, plan.window)
    fp32 = PlannedModel(args.artifact, plan, threads=args.threads)
    fp32.check_steps(args.steps)
    runs = [("fp32-full", fp32, full_plan), ("fp32-plan", fp32, plan)]
    if args.quant:
        quant = PlannedModel(args.quant, plan, threads=args.threads)
        if not any(r["pass"].startswith("quant") for r in quant.manifest["pass_stats"]):
            raise GenzipError(f"--quant {args.quant} was compiled without a quant pass",
                              "compile it with 'canonicalize-attn,annotate-precision,calibrate,"
                              "quant{scheme=w8a8},share-attn'")
        if args.quant_full:
            runs.append(("quant-full", quant, full_plan))
        runs.append(("quant-plan", quant, plan))
    cond, uncond = default_conditioning(fp32, 1, args.seed)
    say = Progress(not args.quiet)
    load_before = os.getloadavg()
    times, latents = interleaved(runs, cond, uncond, repeat=args.repeat, progress=say, steps=args.steps,
                                 cfg=args.cfg, seed=args.seed, scheduler=args.scheduler)
    base_ms = statistics.median(times["fp32-full"])
    variants = {}
    for name, _, _ in runs:
        ms = statistics.median(times[name])
        db = psnr(latents["fp32-full"], latents[name])
        variants[name] = {"ms": ms, "all_ms": times[name], "speedup": base_ms / ms,
                          # minima: steadier than medians on a shared machine
                          "min_ms": min(times[name]), "speedup_min": min(times["fp32-full"]) / min(times[name]),
                          "psnr_db": None if name == "fp32-full" or db == float("inf") else db}
    summary = {"artifact": args.artifact, "quant": args.quant, "plan": args.plan, "steps": args.steps,
               "cfg": args.cfg, "seed": args.seed, "scheduler": args.scheduler, "repeat": args.repeat,
               "methods": plan.counts(), "attn_flops_saved": flops_saved(fp32, plan), "variants": variants,
               "loadavg_before": [round(x, 2) for x in load_before],
               "loadavg_after": [round(x, 2) for x in os.getloadavg()]}
    if args.json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    else:
        for name, v in variants.items():
            quality = f", PSNR {v['psnr_db']:.1f} dB" if v["psnr_db"] is not None else ""
            sys.stdout.write(f"{name:>10}: median {v['ms']:9.1f} ms {v['speedup']:.2f}x, min {v['min_ms']:9.1f} ms "
                             f"{v['speedup_min']:.2f}x{quality}\n")
        sys.stdout.write(f"attention FLOPs saved {100 * summary['attn_flops_saved']:.1f}%; load "
                         f"{summary['loadavg_before'][0]:.2f} -> {summary['loadavg_after'][0]:.2f}\n")
    return 0


if __name__ == "__main__":
    sys.exit(_common.main("bench_share.py", __doc__, add_arguments, run))
