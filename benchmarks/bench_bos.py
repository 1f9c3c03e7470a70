"""``python benchmarks/bench_bos.py``: MixDQ's BOS handling (``bos=true``) vs plain quantization of the text path on ``trained-sd3``.

    python benchmarks/bench_bos.py [--samples N] [--schemes w8a8,w4a8] [--steps 20] [--cfg 4]
        [--keep DIR] [--reuse] [--json]

One process. ``trained-sd3`` (an SD3 MMDiT reading captions through its CLIP-style causal
text encoder, trained contrastively and then frozen; token 0 = ``<bos>``) is compiled
into real ``ort`` artifacts: FP32, and per scheme S

* ``S`` with the default keeps: the text path (``context_embedder``, the GEMM on the
  text encoder's states) stays fp32, as genzip keeps caption embedders;
* ``S text bos=false``: ``annotate-precision{scheme=S quantize=context_embedder}``, the
  text path quantized as plainly as every other layer (token 0 in the same range);
* ``S text bos=true``: the same with MixDQ's BOS handling (token 0's output a
  precomputed constant, tokens 1: quantized with a range that ignores token 0).

Quality is ``genzip eval``'s (``genzip.runtime._eval_dit``): ``N`` samples captioned with
the held-out digits' labels, class accuracy by the committed judge, Fréchet distance in
its feature space, PSNR / SSIM vs FP32 at the same seeds (FP32 is sampled once). It also
measures what MixDQ's premise needs: the **token-0 activation ratio** at the text path's
input (the encoder's token states) on the preset's calibration captions: max |x| over
token 0 / max |x| over tokens 1:, overall and per channel (the largest channel ratio).
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

PRESET = "trained-sd3"
TEXT_PATH = "context_embedder"
SCHEMES = ("w8a8", "w4a8", "w8a8-dynamic")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--samples", type=int, default=40, help="held-out labels sampled per variant")
    p.add_argument("--schemes", default="w8a8", help=f"comma-separated subset of {','.join(SCHEMES)}")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", help="write the artifacts here (default: a temporary folder)")
    p.add_argument("--reuse", action="store_true", help="with --keep: reuse artifacts already compiled there")
    p.add_argument("--json", action="store_true")


def _compile(name: str, passes: str, folder: str, say, reuse: bool) -> tuple[str, dict]:
    from genzip.backends.artifact import read_manifest
    from genzip.compile import CompileOptions, compile_model
    from genzip.passes import build_pipeline

    out = os.path.join(folder, name)
    if reuse and os.path.isfile(os.path.join(out, "genzip.json")):
        manifest = read_manifest(out)
        if manifest["passes"] == str(build_pipeline(passes)) and manifest["source"] == PRESET:
            say(f"reusing {out}")
            return out, manifest
    say(f"compiling {name}: {passes or '(no passes)'}")
    return out, compile_model(PRESET, out, CompileOptions(passes=passes, min_cosine=0.0, force=True))


def token0_ratio(samples: int = 8) -> dict:
    """Token-0 vs other tokens' activation magnitude at the text path's input, on the
    preset's calibration captions (the committed encoder's token states)."""
    import torch

    from genzip.frontend.trained import WEIGHTS, _captions

    embed = _captions.CaptionEmbedder(WEIGHTS / PRESET)
    a = torch.cat([embed(2, 1000 + i)[0] for i in range(samples)]).abs()
    t0, rest = a[:, 0], a[:, 1:]
    per_channel = t0.amax(0) / rest.amax((0, 1)).clamp_min(1e-12)
    return {"token0_max": float(t0.max()), "other_tokens_max": float(rest.max()),
            "ratio": float(t0.max() / rest.max()), "max_channel_ratio": float(per_channel.max()),
            "token0_rms_over_others_rms": float(t0.pow(2).mean().sqrt() / rest.pow(2).mean().sqrt())}


def run(args) -> int:
    from genzip.runtime import _eval_data, _eval_dit
    from genzip.runtime import _image_metrics as im
    from genzip.runtime.model import PlannedModel
    from genzip.tools.cli_common import Progress

    schemes = [s for s in args.schemes.split(",") if s]
    bad = [s for s in schemes if s not in SCHEMES]
    if bad or not schemes or args.samples < 2:
        raise GenzipError(f"--schemes: unknown {', '.join(bad) or '(none)'} or --samples < 2",
                          f"choose from {','.join(SCHEMES)}, --samples >= 2")
    from genzip.frontend.trained import WEIGHTS

    if not (WEIGHTS / PRESET / "config.json").is_file():
        raise GenzipError(f"{PRESET} has no committed weights in {WEIGHTS / PRESET}",
                          "train them: python -m genzip.frontend.trained.train_captioned --out that folder")
    say = Progress(not args.quiet)
    load = [round(x, 2) for x in os.getloadavg()]
    ratio = token0_ratio()
    say(f"token-0 ratio at the text path's input: {ratio['ratio']:.3f}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or tmp
        os.makedirs(folder, exist_ok=True)
        variants = [("fp32", "")]
        for scheme in schemes:
            tail = f"calibrate,quant{{scheme={scheme}}}"
            variants.append((scheme, f"annotate-precision{{scheme={scheme}}},{tail}"))
            for bos in ("false", "true"):
                variants.append((f"{scheme} text bos={bos}",
                                 f"annotate-precision{{scheme={scheme} quantize={TEXT_PATH} bos={bos}}},{tail}"))
        built = []
        for name, passes in variants:
            d, manifest = _compile(name.replace(" ", "_").replace("=", "-"), passes, folder, say, args.reuse)
            built.append((name, d, manifest))
        fp32 = PlannedModel(built[0][1])
        cond, uncond, described, extra = _eval_dit.conditions(fp32, args.samples, args.seed, PRESET)
        labels = _eval_dit.heldout_labels(args.samples)
        schedule = _eval_data.dit_schedule()
        judge = _eval_data.judge()
        real, _ = _eval_data.heldout_images(10**9)
        _, real_features = _eval_data.judge_logits_features(judge, real)
        rows, reference = [], None
        for name, d, manifest in built:
            t0 = time.perf_counter()
            lat = _eval_dit.sample_all(PlannedModel(d), cond, uncond, steps=args.steps, cfg=args.cfg, seed=args.seed,
                                       scheduler="dpm", scheduler_config=schedule, extra=extra)
            reference = lat if reference is None else reference
            got = _eval_dit.judged(lat, labels, real_features, judge)
            ref, art = np.clip(reference, -1, 1), np.clip(lat, -1, 1)
            psnr = im.psnr(ref, art)
            quant = next((r["stats"] for r in manifest.get("pass_stats", []) if r["pass"].startswith("quant")), {})
            p = got["accuracy"]
            rows.append({"variant": name, "passes": manifest["passes"], **got,
                         "accuracy_se": math.sqrt(p * (1 - p) / len(lat)),
                         "psnr_db": None if math.isinf(psnr) else psnr, "ssim": im.ssim(ref, art),
                         "bos_layers": quant.get("bos"), "quant_fidelity": manifest.get("quant_fidelity"),
                         "sampling_s": round(time.perf_counter() - t0, 1)})
            say(f"{name}: accuracy {p:.3f}, Fréchet {got['frechet_distance']:.1f}, SSIM vs FP32 {rows[-1]['ssim']:.3f}")
    for row in rows:
        row["accuracy_delta_points"] = round(100 * (row["accuracy"] - rows[0]["accuracy"]), 2)
    result = {"model": PRESET, "samples": args.samples, "steps": args.steps, "cfg": args.cfg, "seed": args.seed,
              "conditions": described, "token0_activation": ratio, "load_before": load,
              "load_after": [round(x, 2) for x in os.getloadavg()], "rows": rows}
    if args.json:
        print(json.dumps(result, indent=1, default=str))
    else:
        _print_table(result)
    return 0


def _print_table(result: dict) -> None:
    r0 = result["token0_activation"]
    print(f"{result['model']}: {result['samples']} held-out captions, {result['steps']} steps, CFG {result['cfg']}; "
          f"token-0 / other-token max |x| at the text path's input {r0['ratio']:.3f} "
          f"(largest channel {r0['max_channel_ratio']:.2f}); load {result['load_before']} -> {result['load_after']}")
    print("| variant | accuracy | Δ points | Fréchet | PSNR dB | SSIM | BOS layers |")
    print("|---|---|---|---|---|---|---|")
    for r in result["rows"]:
        psnr = "inf" if r["psnr_db"] is None else f"{r['psnr_db']:.1f}"
        print(f"| {r['variant']} | {r['accuracy']:.3f} ± {r['accuracy_se']:.3f} | {r['accuracy_delta_points']:+.1f} | "
              f"{r['frechet_distance']:.1f} | {psnr} | {r['ssim']:.3f} | {r['bos_layers']} |")


if __name__ == "__main__":
    sys.exit(_common.main("bench_bos.py", __doc__, add_arguments, run))
