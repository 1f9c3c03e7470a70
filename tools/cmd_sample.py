"""``genzip sample ARTIFACT [--plan plan.json]``: CFG sampling of a compiled DiT, with timing.

Conditioning, for a text DiT: ``--embeds FILE.npz`` with ``prompt_embeds`` (and
optionally ``negative_prompt_embeds``, default zeros); for a class-conditional DiT
(``class_labels`` input): ``--labels 207,360`` or ``--embeds FILE.npz`` with
``class_labels`` (int64 [B]; the unconditional half is the null class). Without
either, seeded random embeddings or labels, so a preset artifact needs no extra
files. Writes
``--out`` (``latents`` array) and prints a timing summary (``--json``: at least
``total_ms``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import numpy as np

from genzip.errors import GenzipError
from genzip.tools.cli_common import add_provider_flags, providers_from


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact")
    p.add_argument("--plan", help="attention-sharing plan JSON (genzip plan); needs a share-attn artifact")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=4.5, help="classifier-free guidance scale")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=1, help="images per run (the model sees 2x for CFG)")
    p.add_argument("--scheduler", default=None,
                   help="dpm (DPM-Solver++ multistep) or flow-euler, on the model's noise schedule when the artifact "
                        "ships its pipeline's scheduler_config.json (default: that scheduler itself, else dpm with "
                        "diffusers' defaults)")
    p.add_argument("--embeds", help=".npz with prompt_embeds [B,T,C] (and negative_prompt_embeds), "
                   "or class_labels [B] for a class-conditional DiT")
    p.add_argument("--labels", help="class-conditional DiT: comma-separated class labels, one image each")
    p.add_argument("--prompt", action="append", metavar="TEXT",
                   help="text pipeline artifact: a prompt, one image each (repeatable)")
    p.add_argument("--image", metavar="IN.png",
                   help="image pipeline artifact (StableDiffusionImg2ImgPipeline): the input image each --prompt "
                        "transforms, at the artifact's pixel size")
    p.add_argument("--strength", type=float, default=None,
                   help="with --image: how far from the input image to go, 0..1 (default diffusers' 0.8)")
    p.add_argument("--out", help="write the final latents here (.npz, key 'latents'); a pipeline artifact "
                   "writes images: image.png (one PNG per label or prompt, image-<i>.png for several)")
    p.add_argument("--grid", action="store_true", help="pipeline artifact: one grid image at --out instead")
    p.add_argument("--force", action="store_true", help="pipeline artifact: replace existing image files")
    p.add_argument("--vs-full", action="store_true",
                   help="also sample with the all-full plan, interleaved in this run: speedup, PSNR, FLOPs saved")
    p.add_argument("--repeat", type=int, default=1, help="with --vs-full: (full, plan) pairs timed")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true")
    add_provider_flags(p)


def psnr(reference: np.ndarray, other: np.ndarray) -> float:
    """PSNR in dB with the reference's data range as peak: 10·log10(range² / MSE)."""
    mse = float(np.mean((reference.astype(np.float64) - other) ** 2))
    peak = float(reference.max() - reference.min())
    return float("inf") if mse == 0 else 10.0 * np.log10(peak**2 / mse)


def compare_full(model, plan, cond, uncond, args) -> dict:
    """All-full vs ``plan`` latency (medians of interleaved runs), PSNR and attention FLOPs saved."""
    from genzip.runtime.plan import Plan
    from genzip.runtime.sampler import interleaved
    from genzip.searches.ditfastattn import flops_saved

    if plan is None:
        raise GenzipError("--vs-full compares a plan with all-full", "pass --plan plan.json")
    full_plan = Plan.all_full(plan.steps, plan.layers, plan.window)
    times, latents = interleaved([("full", model, full_plan), ("plan", model, plan)], cond, uncond,
                                 repeat=max(1, args.repeat), steps=args.steps, cfg=args.cfg, seed=args.seed,
                                 scheduler=args.scheduler)
    full_ms, plan_ms = statistics.median(times["full"]), statistics.median(times["plan"])
    return {"full_ms": full_ms, "plan_ms": plan_ms, "speedup": full_ms / plan_ms,
            # identical latents: PSNR is infinite, written as null (JSON has no Infinity)
            "psnr_db": None if np.isinf(db := psnr(latents["full"], latents["plan"])) else db,
            "attn_flops_saved": flops_saved(model, plan),
            "latents": latents["plan"], "total_ms": plan_ms}


def conditioning(model, path: str | None, batch: int, seed: int,
                 labels: str | None = None, distinct: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(cond, uncond) of the artifact's conditioning input (``genzip.runtime.conditioning``)."""
    from genzip.runtime import conditioning as C

    if labels is not None:
        if path is not None:
            raise GenzipError("both --labels and an .npz of conditioning were given", "pass only one")
        if C.conditioning_input(model) != C.CLASS:
            raise GenzipError(f"--labels needs a class-conditional DiT, but {model.folder} takes text embeddings",
                              "pass --embeds FILE.npz with prompt_embeds, or drop --labels")
        return C.class_pair(model, C.parse_labels(labels), "--labels")
    if path is None:
        return C.default_conditioning(model, batch, seed, distinct)
    return C.from_npz(model, path)


def run(args: argparse.Namespace) -> int:
    from genzip.runtime.model import PlannedModel
    from genzip.runtime.plan import load_plan
    from genzip.runtime.sampler import sample, scheduler_for

    if args.batch < 1:
        raise GenzipError(f"--batch {args.batch} must be >= 1", "pass a positive batch")
    from genzip.runtime.pipeline import read_pipeline_manifest

    if read_pipeline_manifest(args.artifact) is not None:  # genzip-compile PIPELINE_FOLDER: images
        from genzip.tools.sample_pipeline import run_pipeline

        return run_pipeline(args, providers_from(args))
    if args.prompt or args.grid or args.image:
        raise GenzipError(f"--prompt, --image and --grid need a pipeline artifact, and {args.artifact} is a single "
                          "model",
                          "compile the diffusers pipeline folder (model_index.json) with genzip-compile, "
                          "or pass --embeds / --labels")
    plan = load_plan(args.plan) if args.plan else None
    model = PlannedModel(args.artifact, plan, threads=args.threads, providers=providers_from(args))
    cond, uncond = conditioning(model, args.embeds, args.batch, args.seed, args.labels)
    summary = {
        "artifact": args.artifact, "plan": args.plan, "steps": args.steps, "cfg": args.cfg, "seed": args.seed,
        "batch": int(cond.shape[0]), "scheduler": scheduler_for(model, args.scheduler)[1], "out": args.out,
        "methods": plan.counts() if plan else None, "providers": model.session.get_providers(),
    }
    if args.vs_full:
        compared = compare_full(model, plan, cond, uncond, args)
        latents = compared.pop("latents")
        summary.update(compared)
    else:
        result = sample(model, cond, uncond, steps=args.steps, cfg=args.cfg, seed=args.seed,
                        scheduler=args.scheduler)
        latents = result.latents
        summary.update(total_ms=result.total_ms, step_ms_median=statistics.median(result.step_ms))
    if args.out:
        np.savez(args.out, latents=latents)
    if args.json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    else:
        saved = f", latents -> {args.out}" if args.out else ""
        sys.stdout.write(f"{args.steps} steps in {summary['total_ms']:.1f} ms{saved}\n")
        if args.vs_full:
            sys.stdout.write(f"vs all-full: {summary['full_ms']:.1f} ms -> {summary['plan_ms']:.1f} ms, speedup "
                             f"{summary['speedup']:.2f}x, PSNR {summary['psnr_db'] or float('inf'):.1f} dB, attention FLOPs saved "
                             f"{100 * summary['attn_flops_saved']:.1f}%\n")
    return 0
