"""``python benchmarks/bench_trained_dit.py``: every compression method on ``trained-dit``, quality beside speed.

    python benchmarks/bench_trained_dit.py [--samples N] [--methods ...] [--windows ...] [--deltas ...]
        [--combined-delta D] [--steps 20] [--cfg 4] [--repeat R] [--plot PNG] [--keep DIR] [--json]

One process. Each method is compiled from the ``trained-dit`` preset into a real ``ort``
artifact with ``genzip.compile.compile_model`` (the function ``genzip-compile`` calls;
``--min-cosine 0``: the quality figures below are the gate), then:

* **quality**: ``N`` samples conditioned on the held-out digits' labels (``genzip eval``'s
  conditions, seed, scheduler and judge: ``genzip.runtime._eval_dit``), class accuracy and
  Fréchet distance in the judge's feature space, and PSNR / SSIM of the clamped images vs
  FP32 at the same seed. FP32 is sampled once and every method is compared with it;
  accuracy's binomial standard error ``sqrt(p(1-p)/N)`` is reported as ``accuracy_se``;
* **speed**: whole CFG sampling (``--steps`` DPM-Solver++ steps, 8 images = 16 rows per
  call) of every method, interleaved round by round in this process (``--repeat``
  rounds); ``speedup`` = FP32's median / the method's median;
* **DiTFastAttn plans**: ``share`` (FP32) artifact, ``genzip plan``'s greedy search
  (``genzip.searches.ditfastattn.greedy_search``) at each ``--deltas`` on calibration
  labels 0..9 (class ids, no held-out image), attention FLOPs saved per plan; the
  **combined recipe** is ``share-w8a8`` with the plan searched at ``--combined-delta``.
  ``--plot`` draws attention FLOPs saved vs accuracy and Fréchet distance.

Goal checks (issue 13): combined recipe >= 3x FP32 sampling speed, accuracy within 2
points of FP32, Fréchet distance <= 1.1x FP32's; W8A8 alone loses at most 1 point.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time

import _common
import numpy as np

from genzip.errors import GenzipError

PRESET = "trained-dit"
W8A8 = "annotate-precision,calibrate,quant{scheme=w8a8}"
# Method -> passes. Recipes are expanded with genzip's own table (what --recipe does).
QUANT_METHODS = {
    "w8a8": "recipe:w8a8",
    "w8a8-dynamic": "recipe:w8a8-dynamic",
    "w8a8-attn": "recipe:w8a8-attn",
    "w4a8": "annotate-precision{scheme=w4a8},calibrate,quant{scheme=w4a8}",
    "w4a8-dynamic": "recipe:w4a8-dynamic",
    "w4a16": "recipe:w4a16",
    "fp8": "recipe:fp8",
    "w8a8-smooth": "recipe:w8a8-smooth",
    "w8a8-hadamard": "annotate-precision,smooth{alpha=0.5 rotate=hadamard},calibrate,quant{scheme=w8a8}",
}
DEFAULT_METHODS = ",".join(["fp32", *QUANT_METHODS, "window", "plans", "combined"])


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--samples", type=int, default=180, help="held-out labels sampled per method (180 = all)")
    p.add_argument("--methods", default=DEFAULT_METHODS,
                   help=f"comma-separated subset of {DEFAULT_METHODS} (fp32 is always run)")
    p.add_argument("--windows", type=_floats, default=[0.5, 0.25, 0.125], help="window-attn windows (fractions)")
    p.add_argument("--deltas", type=_floats, default=[0.01, 0.02, 0.05, 0.1, 0.2], help="plan search thresholds")
    p.add_argument("--combined-delta", type=float, default=None,
                   help="the plan of the combined recipe (default: the largest --deltas plan whose FP32 "
                        "accuracy is within 2 points and Fréchet within 1.1x of FP32)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat", type=int, default=5, help="interleaved timing rounds")
    p.add_argument("--timing-images", type=int, default=8, help="images per timed sampling")
    p.add_argument("--plot", help="PNG: attention FLOPs saved vs accuracy / Fréchet distance of the plans")
    p.add_argument("--keep", help="write the artifacts and plans here (default: a temporary folder)")
    p.add_argument("--reuse", action="store_true",
                   help="with --keep: reuse an artifact already there with the same source and passes, "
                        "and a plan file already searched at that δ")
    p.add_argument("--json", action="store_true")


def _spec(passes: str) -> str:
    from genzip.tools.recipes import expand_recipe

    return expand_recipe(passes[len("recipe:"):]) if passes.startswith("recipe:") else passes


def _compile(name: str, passes: str, folder: str, say, reuse: bool = False) -> tuple[str, dict, float]:
    from genzip.backends.artifact import read_manifest
    from genzip.compile import CompileOptions, compile_model
    from genzip.passes import build_pipeline

    out = os.path.join(folder, name)
    if reuse and os.path.isfile(os.path.join(out, "genzip.json")):
        manifest = read_manifest(out)
        if manifest["passes"] == str(build_pipeline(passes)) and manifest["source"] == PRESET:
            say(f"reusing {out} ({passes or 'no passes'})")
            return out, manifest, 0.0
    t0 = time.perf_counter()
    say(f"compiling {name}: {passes or '(no passes)'}")
    manifest = compile_model(PRESET, out, CompileOptions(passes=passes, min_cosine=0.0, force=True))
    return out, manifest, time.perf_counter() - t0


def _pass_stats(manifest: dict, prefix: str) -> dict:
    return next((r["stats"] for r in manifest.get("pass_stats", []) if r["pass"].startswith(prefix)), {})


class _Quality:
    """FP32's samples once; every method's judged against the real held-out images and FP32."""

    def __init__(self, fp32_model, samples: int, seed: int, steps: int, cfg: float):
        from genzip.runtime import _eval_data, _eval_dit

        self.samples, self.seed, self.steps, self.cfg = samples, seed, steps, cfg
        self.cond, self.uncond, _, _ = _eval_dit.conditions(fp32_model, samples, seed, PRESET)
        self.schedule = _eval_data.dit_schedule()
        self.judge = _eval_data.judge()
        real, _ = _eval_data.heldout_images(10**9)
        _, self.real_features = _eval_data.judge_logits_features(self.judge, real)
        self.reference = self.latents(fp32_model)

    def latents(self, model) -> np.ndarray:
        from genzip.runtime import _eval_dit

        return _eval_dit.sample_all(model, self.cond, self.uncond, steps=self.steps, cfg=self.cfg, seed=self.seed,
                                    scheduler="dpm", scheduler_config=self.schedule)

    def figures(self, model) -> dict:
        from genzip.runtime import _eval_data
        from genzip.runtime import _image_metrics as im

        lat = self.reference if model is None else self.latents(model)
        logits, features = _eval_data.judge_logits_features(self.judge, np.clip(lat, -1, 1))
        pred = logits.argmax(-1)
        if model is None:
            self.reference_pred = pred
        p, n = float(np.mean(pred == self.cond)), len(lat)
        ref, art = np.clip(self.reference, -1, 1), np.clip(lat, -1, 1)
        psnr = im.psnr(ref, art)
        return {"accuracy": p, "accuracy_se": math.sqrt(p * (1 - p) / n),
                "frechet_distance": im.frechet_from_features(features, self.real_features),
                # paired with FP32 (same seeds and labels): far less noisy than two accuracies
                "judge_agreement": float(np.mean(pred == self.reference_pred)),
                "psnr_db": None if math.isinf(psnr) else psnr, "ssim": im.ssim(ref, art),
                # the raw final latents, before the clamp the judge sees (they overshoot [-1, 1])
                "latent_rel_err": float(np.linalg.norm(lat - self.reference) / np.linalg.norm(self.reference))}


def _search_plan(model, delta: float, args, path: str, schedule: dict) -> dict:
    from genzip.runtime import conditioning
    from genzip.runtime.plan import load_plan
    from genzip.searches.ditfastattn import flops_saved, greedy_search

    if args.reuse and os.path.isfile(path):
        plan = load_plan(path)
        if plan.steps == args.steps:
            return {"plan": plan, "path": path, "methods": plan.counts(), "calls": None, "search_s": None,
                    "attn_flops_saved": flops_saved(model, plan)}
    cond, uncond = conditioning.class_pair(model, np.arange(10, dtype=np.int64), "calibration labels")
    t0 = time.perf_counter()
    found = greedy_search(model, cond, uncond, delta=delta, steps=args.steps, cfg=args.cfg, seed=args.seed,
                          scheduler="dpm", scheduler_config=schedule)
    found.plan.save(path)
    return {"plan": found.plan, "path": path, "methods": found.plan.counts(), "calls": found.calls,
            "search_s": round(time.perf_counter() - t0, 1), "attn_flops_saved": flops_saved(model, found.plan)}


def run(args) -> int:
    from genzip.runtime import _eval_data
    from genzip.runtime.model import PlannedModel
    from genzip.runtime.sampler import interleaved
    from genzip.tools.cli_common import Progress

    methods = [m for m in args.methods.split(",") if m]
    known = DEFAULT_METHODS.split(",")
    bad = [m for m in methods if m not in known]
    if bad:
        raise GenzipError(f"--methods: unknown {', '.join(bad)}", f"choose from {DEFAULT_METHODS}")
    if args.samples < 2 or args.repeat < 1 or args.steps < 1:
        raise GenzipError("--samples must be >= 2, --repeat and --steps >= 1", "e.g. --samples 180 --repeat 5")
    say = Progress(not args.quiet)
    load = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or tmp
        os.makedirs(folder, exist_ok=True)
        rows: list[dict] = []
        runs = []  # (name, PlannedModel, plan) timed interleaved

        def add(name: str, kind: str, artifact: str, manifest: dict, build_s: float, plan=None, extra=None):
            model = PlannedModel(artifact)
            rows.append({"method": name, "kind": kind, "passes": manifest["passes"], "build_s": round(build_s, 1),
                         **(extra or {}), "_model": model, "_plan": plan})
            runs.append((name, model, plan))
            return model

        fp32_dir, man, s = _compile("fp32", "", folder, say, args.reuse)
        fp32 = add("fp32", "reference", fp32_dir, man, s)
        for name, passes in QUANT_METHODS.items():
            if name in methods:
                d, man, s = _compile(name, _spec(passes), folder, say, args.reuse)
                extra = {}
                if name in ("w8a8-hadamard", "w8a8-smooth"):
                    extra["rotated"] = _pass_stats(man, "smooth").get("rotated")
                    extra["smoothed"] = _pass_stats(man, "smooth").get("smoothed")
                add(name, "quant", d, man, s, extra=extra)
        if "window" in methods:
            for w in args.windows:
                d, man, s = _compile(f"window-{w:g}", f"canonicalize-attn,window-attn{{window={w:g}}},dce", folder,
                                     say, args.reuse)
                st = _pass_stats(man, "window-attn")
                add(f"window {w:g}", "window", d, man, s, extra={"window": w, "attn_stats": st})
        plans: dict[float, dict] = {}
        if "plans" in methods or "combined" in methods:
            d, man, s = _compile("share", _spec("recipe:share"), folder, say, args.reuse)
            share = PlannedModel(d)
            deltas = sorted(set(args.deltas) | ({args.combined_delta} if args.combined_delta is not None else set()))
            for delta in deltas:
                say(f"plan search at delta {delta:g}")
                plans[delta] = _search_plan(share, delta, args, os.path.join(folder, f"plan-{delta:g}.json"),
                                            _eval_data.dit_schedule())
                info = {k: v for k, v in plans[delta].items() if k not in ("plan",)}
                add(f"share + plan δ={delta:g}", "plan", d, man, s, plans[delta]["plan"],
                    extra={"delta": delta, **info})
        say(f"quality: {args.samples} held-out labels x {len(rows)} methods")
        quality = _Quality(fp32, args.samples, args.seed, args.steps, args.cfg)
        for row in rows:
            model = row["_model"]
            model.set_plan(row["_plan"])
            t0 = time.perf_counter()
            row.update(quality.figures(None if row["method"] == "fp32" else model), samples=args.samples)
            row["quality_s"] = round(time.perf_counter() - t0, 1)
            say(f"{row['method']}: accuracy {row['accuracy']:.3f}, Fréchet {row['frechet_distance']:.1f}")
        ref = rows[0]
        if "combined" in methods:
            delta = args.combined_delta if args.combined_delta is not None else _pick_delta(rows, ref)
            d, man, s = _compile("share-w8a8", _spec("recipe:share-w8a8"), folder, say, args.reuse)
            plan = plans[delta]
            add(f"combined: share-w8a8 + plan δ={delta:g}", "combined", d, man, s, plan["plan"],
                extra={"delta": delta, **{k: v for k, v in plan.items() if k != "plan"}})
            row = rows[-1]
            row["_model"].set_plan(plan["plan"])
            row.update(quality.figures(row["_model"]))
        say(f"timing: {args.repeat} interleaved rounds of {len(runs)} samplings")
        cond, uncond = quality.cond[:args.timing_images], quality.uncond[:args.timing_images]
        times, _ = interleaved(runs, cond, uncond, repeat=args.repeat, steps=args.steps, cfg=args.cfg, seed=args.seed,
                               scheduler="dpm", scheduler_config=quality.schedule)
        base = float(np.median(times["fp32"]))
        for row in rows:
            t = times[row["method"]]
            row["sampling_ms"] = round(float(np.median(t)), 1)
            row["sampling_ms_min"] = round(float(np.min(t)), 1)
            row["speedup"] = round(base / float(np.median(t)), 3)
            row["accuracy_delta_points"] = round(100 * (row["accuracy"] - ref["accuracy"]), 2)
            row["frechet_ratio"] = round(row["frechet_distance"] / ref["frechet_distance"], 4)
            del row["_model"], row["_plan"]
        if args.plot:
            _plot(args.plot, rows, ref)
    goals = _goals(rows, ref)
    result = {"model": PRESET, "samples": args.samples, "steps": args.steps, "cfg": args.cfg, "seed": args.seed,
              "repeat": args.repeat, "timing_images": args.timing_images, "load_before": load,
              "load_after": [round(x, 2) for x in os.getloadavg()], "rows": rows, "goals": goals,
              "plot": args.plot}
    if args.json:
        print(json.dumps(result, indent=1, default=str))
    else:
        _print_table(result)
    return 0


def _pick_delta(rows: list[dict], ref: dict) -> float:
    """Largest δ whose FP32 plan keeps the combined recipe's quality goals (else the smallest)."""
    ok = [r["delta"] for r in rows if r["kind"] == "plan" and _quality_ok(r, ref)]
    return max(ok) if ok else min(r["delta"] for r in rows if r["kind"] == "plan")


def _quality_ok(row: dict, ref: dict) -> bool:
    return row["accuracy"] >= ref["accuracy"] - 0.02 and row["frechet_distance"] <= 1.1 * ref["frechet_distance"]


def _goals(rows: list[dict], ref: dict) -> dict:
    out = {}
    for row in rows:
        if row["kind"] == "combined":
            out["combined"] = {"method": row["method"], "speedup": row["speedup"], "speedup_goal": 3.0,
                               "accuracy_delta_points": row["accuracy_delta_points"], "accuracy_goal_points": -2.0,
                               "frechet_ratio": row["frechet_ratio"], "frechet_goal_ratio": 1.1,
                               "met": row["speedup"] >= 3.0 and _quality_ok(row, ref)}
        if row["method"] == "w8a8":
            out["w8a8"] = {"accuracy_delta_points": row["accuracy_delta_points"], "goal_points": -1.0,
                           "met": row["accuracy_delta_points"] >= -1.0}
    return out


def _plot(path: str, rows: list[dict], ref: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = sorted((r for r in rows if r["kind"] == "plan"), key=lambda r: r["attn_flops_saved"])
    comb = [r for r in rows if r["kind"] == "combined"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, key, label in ((a1, "accuracy", "class accuracy"), (a2, "frechet_distance", "Fréchet distance")):
        x = [100 * r["attn_flops_saved"] for r in pts]
        y = [100 * r[key] if key == "accuracy" else r[key] for r in pts]
        ax.plot(x, y, "o-", label="share (FP32) + plan")
        for r, xi, yi in zip(pts, x, y):
            ax.annotate(f"δ={r['delta']:g}", (xi, yi), fontsize=7, textcoords="offset points", xytext=(3, 3))
        for r in comb:
            ax.plot([100 * r["attn_flops_saved"]], [100 * r[key] if key == "accuracy" else r[key]], "s",
                    color="C3", label="share-w8a8 + plan")
        base = 100 * ref[key] if key == "accuracy" else ref[key]
        ax.axhline(base, color="gray", ls="--", lw=1, label="FP32 all-full")
        if key == "accuracy":
            ax.axhspan(base - 200 * ref["accuracy_se"], base + 200 * ref["accuracy_se"], color="gray", alpha=0.15)
            ax.set_ylabel("class accuracy (%)")
        else:
            ax.axhline(1.1 * base, color="C2", ls=":", lw=1, label="goal: 1.1x FP32")
            ax.set_ylabel(label)
        ax.set_xlabel("attention FLOPs saved (%)")
        ax.legend(fontsize=7)
    fig.suptitle(f"trained-dit: DiTFastAttn plans at {len(pts)} δ, {ref['samples']} samples of the held-out "
                 f"labels (band: FP32 ± 2 s.e.)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _print_table(result: dict) -> None:
    print(f"{result['model']}: {result['samples']} held-out labels, {result['steps']} steps, CFG {result['cfg']}, "
          f"{result['repeat']} interleaved rounds; load {result['load_before']} -> {result['load_after']}")
    head = ["method", "speedup", "sampling ms", "accuracy", "Δ points", "judge agrees w/ FP32", "Fréchet", "× FP32",
            "PSNR dB", "SSIM", "raw latent rel. err", "attn FLOPs saved"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in result["rows"]:
        saved = f"{100 * r['attn_flops_saved']:.1f}%" if "attn_flops_saved" in r else "—"
        psnr = "inf" if r["psnr_db"] is None else f"{r['psnr_db']:.1f}"
        print(f"| {r['method']} | {r['speedup']:.2f}x | {r['sampling_ms']:.0f} | {r['accuracy']:.3f} "
              f"± {r['accuracy_se']:.3f} | {r['accuracy_delta_points']:+.1f} | {r['judge_agreement']:.3f} | "
              f"{r['frechet_distance']:.1f} | {r['frechet_ratio']:.3f} | {psnr} | {r['ssim']:.3f} | "
              f"{r['latent_rel_err']:.3g} | {saved} |")
    for name, g in result["goals"].items():
        print(f"goal {name}: {'met' if g['met'] else 'MISSED'} {json.dumps(g)}")


if __name__ == "__main__":
    sys.exit(_common.main("bench_trained_dit.py", __doc__, add_arguments, run))
