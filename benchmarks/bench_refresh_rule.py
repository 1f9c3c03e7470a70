"""``python benchmarks/bench_refresh_rule.py``: DiTFastAttn's residual-refresh rule, before vs after, on ``trained-dit``.

    python benchmarks/bench_refresh_rule.py [--samples N] [--periods 4,2] [--steps 20] [--cfg 4]
        [--repeat R] [--timing-images N] [--keep DIR] [--reuse] [--json]

One process. The ``share`` recipe (FP32, ``share-attn{window=0.125}``) of ``trained-dit``
replays hand-built plans under the two refresh rules of ``genzip.runtime.plan``:

* ``full-attention`` (after issue 16, DiTFastAttn's reference): every step that computes
  full attention (``full`` and ``full+share-cfg``) refreshes the WA-RS residual;
* ``full-only`` (before): only ``full`` refreshes, so WA-RS steps after a
  ``full+share-cfg`` step reuse the residual of step 0.

The rules differ only on a plan with ``full+share-cfg`` steps followed by WA-RS steps,
which ``genzip plan`` never picks on ``trained-dit`` (its search accepts AST first, see
``bench_trained_dit.py``), so the plans are built by hand: ``asc-every-P`` has, in every
layer, step 0 ``full``, every P-th step ``full+share-cfg`` and ``window-residual`` in
between. Quality: ``genzip eval``'s held-out labels, judge, scheduler and seed (the
helpers of ``bench_trained_dit.py``), vs FP32 all-full; speed: whole CFG sampling,
variants interleaved round by round; ``rules_psnr_db`` compares the two rules' images.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import _common
import bench_trained_dit as btd
import numpy as np

from genzip.errors import GenzipError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--samples", type=int, default=40, help="held-out labels sampled per variant")
    p.add_argument("--periods", default="4", help="comma-separated P of the asc-every-P plans (P >= 2)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat", type=int, default=3, help="interleaved timing rounds")
    p.add_argument("--timing-images", type=int, default=4, help="images per timed sampling")
    p.add_argument("--keep", help="write the artifacts and plans here (default: a temporary folder)")
    p.add_argument("--reuse", action="store_true", help="with --keep: reuse artifacts already compiled there")
    p.add_argument("--json", action="store_true")


class _Quality(btd._Quality):
    """``bench_trained_dit``'s quality figures, keeping the last sampled latents."""

    def latents(self, model) -> np.ndarray:
        self.last = super().latents(model)
        return self.last


def asc_every(period: int, steps: int, layers: int, window: int):
    """Every layer: step 0 ``full``, steps t % period == 0 ``full+share-cfg``, else ``window-residual``."""
    from genzip.runtime import plan as P

    row = tuple(P.FULL if t == 0 else P.FULL_CFG if t % period == 0 else P.WINDOW for t in range(steps))
    return P.Plan(steps, layers, window, tuple(row for _ in range(layers)))


def run(args) -> int:
    from genzip.runtime import _image_metrics as im
    from genzip.runtime import plan as P
    from genzip.runtime.model import PlannedModel
    from genzip.runtime.sampler import interleaved
    from genzip.tools.cli_common import Progress

    try:
        periods = [int(x) for x in args.periods.split(",") if x.strip()]
    except ValueError:
        raise GenzipError(f"--periods: expected integers, got {args.periods!r}", "e.g. --periods 4,2") from None
    if not periods or min(periods) < 2 or args.samples < 2 or args.repeat < 1:
        raise GenzipError("--periods must be integers >= 2, --samples >= 2, --repeat >= 1", "e.g. --periods 4")
    say = Progress(not args.quiet)
    load = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or tmp
        os.makedirs(folder, exist_ok=True)
        fp32_dir, _, _ = btd._compile("fp32", "", folder, say, args.reuse)
        share_dir, man, _ = btd._compile("share", btd._spec("recipe:share"), folder, say, args.reuse)
        fp32 = PlannedModel(fp32_dir)
        rows = [{"variant": "fp32 all-full", "plan": None, "refresh": None, "_model": fp32, "_plan": None}]
        for period in periods:
            probe = PlannedModel(share_dir)
            plan = asc_every(period, args.steps, probe.layers, probe.layout.window)
            path = os.path.join(folder, f"plan-asc-every-{period}.json")
            plan.save(path)
            for rule in (P.REFRESH_FULL_ONLY, P.REFRESH_FULL_ATTENTION):
                refreshes = sum(m in P.REFRESH_MODES for t in range(plan.steps) for m in plan.modes(t, rule))
                rows.append({"variant": f"share + asc-every-{period}, refresh={rule}", "plan": path,
                             "refresh": rule, "methods": plan.counts(), "residual_refreshes": refreshes,
                             "_model": PlannedModel(share_dir, refresh=rule), "_plan": plan})
        say(f"quality: {args.samples} held-out labels x {len(rows)} variants")
        quality = _Quality(fp32, args.samples, args.seed, args.steps, args.cfg)
        images = {}
        for row in rows:
            model = row["_model"]
            model.set_plan(row["_plan"])
            row.update(quality.figures(None if row["plan"] is None else model))
            images[row["variant"]] = np.clip(quality.reference if row["plan"] is None else quality.last, -1, 1)
            say(f"{row['variant']}: accuracy {row['accuracy']:.3f}, judge agrees {row['judge_agreement']:.3f}, "
                f"SSIM {row['ssim']:.3f}")
        for period in periods:
            old, new = (images[f"share + asc-every-{period}, refresh={r}"]
                        for r in (P.REFRESH_FULL_ONLY, P.REFRESH_FULL_ATTENTION))
            psnr = im.psnr(new, old)  # the two rules' images, same seeds: how much the rule changes
            for row in rows:
                if row["variant"].startswith(f"share + asc-every-{period},"):
                    row["rules_psnr_db"] = None if np.isinf(psnr) else psnr
        say(f"timing: {args.repeat} interleaved rounds of {len(rows)} samplings")
        runs = [(row["variant"], row["_model"], row["_plan"]) for row in rows]
        cond, uncond = quality.cond[:args.timing_images], quality.uncond[:args.timing_images]
        times, _ = interleaved(runs, cond, uncond, repeat=args.repeat, steps=args.steps, cfg=args.cfg, seed=args.seed,
                               scheduler="dpm", scheduler_config=quality.schedule)
        base = float(np.median(times["fp32 all-full"]))
        ref = rows[0]
        for row in rows:
            t = times[row["variant"]]
            row["sampling_ms"] = round(float(np.median(t)), 1)
            row["speedup"] = round(base / float(np.median(t)), 3)
            row["accuracy_delta_points"] = round(100 * (row["accuracy"] - ref["accuracy"]), 2)
            del row["_model"], row["_plan"]
    result = {"model": btd.PRESET, "artifact_passes": man["passes"], "samples": args.samples, "steps": args.steps,
              "cfg": args.cfg, "seed": args.seed, "repeat": args.repeat, "timing_images": args.timing_images,
              "plans": "built by hand (asc-every-P), not searched", "load_before": load,
              "load_after": [round(x, 2) for x in os.getloadavg()], "rows": rows}
    if args.json:
        print(json.dumps(result, indent=1, default=str))
    else:
        _print_table(result)
    return 0


def _print_table(result: dict) -> None:
    print(f"{result['model']}: {result['samples']} held-out labels, {result['steps']} steps, CFG {result['cfg']}; "
          f"load {result['load_before']} -> {result['load_after']}")
    head = ["variant", "speedup", "accuracy", "Δ points", "judge agrees w/ FP32", "Fréchet", "PSNR dB", "SSIM",
            "raw latent rel. err"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in result["rows"]:
        psnr = "inf" if r["psnr_db"] is None else f"{r['psnr_db']:.1f}"
        print(f"| {r['variant']} | {r['speedup']:.2f}x | {r['accuracy']:.3f} ± {r['accuracy_se']:.3f} | "
              f"{r['accuracy_delta_points']:+.1f} | {r['judge_agreement']:.3f} | {r['frechet_distance']:.1f} | "
              f"{psnr} | {r['ssim']:.3f} | {r['latent_rel_err']:.3g} |")


if __name__ == "__main__":
    sys.exit(_common.main("bench_refresh_rule.py", __doc__, add_arguments, run))
