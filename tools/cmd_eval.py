"""``genzip eval ARTIFACT [--vs REFERENCE] [--plan P.json]``: generation quality of a DiT or LLM artifact.

Prints the figures of ``genzip.runtime.evaluate`` (``--json``: the whole dict; an
infinite PSNR, identical latents, is written as the string ``"inf"`` since JSON has no
infinity). A figure that cannot be measured is ``null`` and ``why`` says why.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from genzip.tools.cli_common import add_provider_flags, providers_from

DIT_FIGURES = ("accuracy", "reference_accuracy", "frechet_distance", "reference_frechet_distance", "psnr_db", "ssim")
LLM_FIGURES = ("perplexity", "reference_perplexity", "kl_divergence", "top1_agreement")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact")
    p.add_argument("--vs", metavar="REFERENCE_ARTIFACT",
                   help="reference artifact of the same model (e.g. its FP32 compile): PSNR/SSIM or KL/top-1")
    p.add_argument("--plan", help="attention-sharing plan for ARTIFACT (share-attn DiT); the reference runs all-full")
    p.add_argument("--samples", type=int, default=16, help="images (DiT) or text windows (LLM)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=20, help="DiT sampling steps")
    p.add_argument("--cfg", type=float, default=4.0, help="DiT classifier-free guidance scale")
    p.add_argument("--scheduler", default=None,
                   help="dpm (DPM-Solver++ multistep) or flow-euler, on the model's noise schedule when the artifact "
                        "ships its pipeline's scheduler_config.json (default: that scheduler itself, else dpm with "
                        "diffusers' defaults)")
    p.add_argument("--grid", metavar="OUT.png", help="DiT: PNG of reference (left) and artifact (right) samples")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true")
    add_provider_flags(p)


def _plain(value):
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return value


def run(args: argparse.Namespace) -> int:
    from genzip.runtime.evaluate import evaluate

    result = evaluate(args.artifact, vs=args.vs, plan=args.plan, samples=args.samples, seed=args.seed,
                      grid=args.grid, steps=args.steps, cfg=args.cfg, scheduler=args.scheduler,
                      threads=args.threads, progress=not args.quiet, providers=providers_from(args))
    if args.json:
        sys.stdout.write(json.dumps({k: _plain(v) for k, v in result.items()}, indent=2) + "\n")
        return 0
    figures = DIT_FIGURES if result["family"] == "dit" else LLM_FIGURES
    described = result.get("conditions") or result.get("text")
    sys.stdout.write(f"{args.artifact} ({result['family']}, preset {result['preset']}): {result['samples']} "
                     f"samples on {described}\n")
    for name in figures:
        value = result[name]
        shown = f"{value:.6g}" if isinstance(value, float) else "n/a"
        reason = f"  ({result['why'][name]})" if value is None and name in result["why"] else ""
        sys.stdout.write(f"  {name:28s} {shown}{reason}\n")
    if result.get("grid"):
        sys.stdout.write(f"grid -> {result['grid']}\n")
    return 0
