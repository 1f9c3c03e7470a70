"""``python benchmarks/bench_trained_llm.py``: MoA spans (and quantization) on ``trained-llama``, quality beside speed.

    python benchmarks/bench_trained_llm.py [--densities 0.75,0.5,0.35,0.25] [--quant w8a8,...] [--samples N]
        [--repeat R] [--plot PNG] [--keep DIR] [--json]

One process. For each ``--densities`` budget D: ``genzip moa-search trained-llama --budget D``
(the CLI's own function: profile on training-split KJV text with the model's tokenizer,
then the MILP), then ``span-attn{plan=FILE}`` compiled into a real ``ort`` artifact with
``genzip.compile.compile_model`` (``--min-cosine 0``: the quality figures are the gate).
Each ``--quant`` recipe is compiled the same way. Then:

* **quality**: ``genzip.runtime.evaluate.evaluate(artifact, vs=FP32, samples=N)``: held-out
  perplexity on the King James held-out chapters (``N`` windows of 128 tokens), KL and
  top-1 agreement vs FP32;
* **speed**: one transformer call on a held-out window, every artifact interleaved round
  by round (``--repeat`` rounds, after one warm-up round); ``speedup`` = FP32 median /
  the artifact's median.

``--plot`` draws held-out perplexity vs the plans' mean attention density at N=128.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import _common
import numpy as np

from genzip.errors import GenzipError

PRESET = "trained-llama"


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--densities", type=_floats, default=[0.75, 0.5, 0.35, 0.25],
                   help="moa-search --budget values (mean attention density)")
    p.add_argument("--quant", default="", help="comma-separated recipes to add (e.g. w8a8,w4a16,fp8,w8a8-smooth)")
    p.add_argument("--samples", type=int, default=64, help="held-out 128-token windows")
    p.add_argument("--repeat", type=int, default=20, help="interleaved timing rounds")
    p.add_argument("--plot", help="PNG: held-out perplexity vs attention density")
    p.add_argument("--keep", help="write the artifacts and plans here (default: a temporary folder)")
    p.add_argument("--json", action="store_true")


def _moa_plan(budget: float, path: str) -> dict:
    from genzip.tools import cmd_moa_search

    args = argparse.Namespace(model=PRESET, out=path, budget=budget, max_distinct=2, alphas=[0.0, 4.0, 8.0],
                              betas=[0.0, 0.125, 0.25, 0.5, 1.0], sinks=2, lengths=None, text=None, windows=8,
                              metric="gradient", json=True)
    with open(os.devnull, "w") as devnull:
        stdout, sys.stdout = sys.stdout, devnull
        try:
            cmd_moa_search.run(args)
        finally:
            sys.stdout = stdout
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _compile(name: str, passes: str, folder: str, say) -> tuple[str, dict, float]:
    from genzip.compile import CompileOptions, compile_model

    out = os.path.join(folder, name)
    say(f"compiling {name}: {passes or '(no passes)'}")
    t0 = time.perf_counter()
    manifest = compile_model(PRESET, out, CompileOptions(passes=passes, min_cosine=0.0, force=True))
    return out, manifest, time.perf_counter() - t0


def run(args) -> int:
    from genzip.backends.runner import load_artifact
    from genzip.runtime import _eval_data
    from genzip.runtime.evaluate import evaluate
    from genzip.tools.cli_common import Progress
    from genzip.tools.recipes import expand_recipe

    if any(not 0 < d <= 1 for d in args.densities):
        raise GenzipError("--densities must be in (0, 1]", "e.g. --densities 0.75,0.5,0.25")
    if args.samples < 1 or args.repeat < 1:
        raise GenzipError("--samples and --repeat must be >= 1", "e.g. --samples 64 --repeat 20")
    quant = [q for q in args.quant.split(",") if q]
    specs = {q: expand_recipe(q) for q in quant}  # unknown recipes fail here, before any compile
    say = Progress(not args.quiet)
    load = [round(x, 2) for x in os.getloadavg()]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or tmp
        os.makedirs(folder, exist_ok=True)
        fp32, man, s = _compile("fp32", "", folder, say)
        rows.append({"method": "fp32", "kind": "reference", "passes": man["passes"], "build_s": round(s, 1),
                     "density": 1.0, "artifact": fp32})
        for d in args.densities:
            say(f"moa-search --budget {d:g}")
            plan_path = os.path.join(folder, f"moa-{d:g}.json")
            t0 = time.perf_counter()
            plan = _moa_plan(d, plan_path)
            search_s = time.perf_counter() - t0
            art, man, s = _compile(f"span-{d:g}", f"canonicalize-attn,span-attn{{plan={plan_path}}},dce", folder, say)
            rows.append({"method": f"MoA spans, budget {d:g}", "kind": "span", "passes": man["passes"],
                         "build_s": round(s, 1), "search_s": round(search_s, 1), "budget": d,
                         "density": plan["density"][-1], "density_by_length": dict(zip(plan["lengths"], plan["density"])),
                         "rules": plan["rules"], "artifact": art})
        for q in quant:
            art, man, s = _compile(q, specs[q], folder, say)
            rows.append({"method": q, "kind": "quant", "passes": man["passes"], "build_s": round(s, 1),
                         "artifact": art})
        for row in rows:
            say(f"evaluating {row['method']} on {args.samples} held-out windows")
            got = evaluate(row["artifact"], vs=None if row["kind"] == "reference" else fp32, samples=args.samples)
            row.update({k: got[k] for k in ("perplexity", "kl_divergence", "top1_agreement", "windows",
                                            "tokens_scored")})
            row["model_mb"] = round(sum(os.path.getsize(os.path.join(row["artifact"], f))
                                        for f in os.listdir(row["artifact"]) if f == "model.onnx"
                                        or f.startswith("model.onnx.")) / 2**20, 2)
        # Timing: one call on one held-out window, interleaved.
        window = _eval_data.heldout_token_windows(_eval_data.tokenizer(PRESET), 128, 1)[:1]
        models = [(row["method"], load_artifact(row["artifact"], prefer="onnxruntime")) for row in rows]
        times: dict[str, list[float]] = {name: [] for name, _ in models}
        say(f"timing: {args.repeat} interleaved rounds of {len(models)} artifacts")
        for r in range(args.repeat + 1):
            for name, model in models:
                t0 = time.perf_counter()
                model(input_ids=window)
                if r:  # round 0 warms up
                    times[name].append((time.perf_counter() - t0) * 1e3)
        base = float(np.median(times["fp32"]))
        ref = rows[0]
        for row in rows:
            row["call_ms"] = round(float(np.median(times[row["method"]])), 3)
            row["speedup"] = round(base / row["call_ms"], 3)
            row["perplexity_change_pct"] = round(100 * (row["perplexity"] / ref["perplexity"] - 1), 3)
            if not args.keep:
                del row["artifact"]
        if args.plot:
            _plot(args.plot, rows, args.samples)
    result = {"model": PRESET, "samples": args.samples, "repeat": args.repeat, "load_before": load,
              "load_after": [round(x, 2) for x in os.getloadavg()], "rows": rows, "plot": args.plot}
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        _print_table(result)
    return 0


def _plot(path: str, rows: list[dict], samples: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spans = sorted((r for r in rows if r["kind"] == "span"), key=lambda r: r["density"])
    ref = rows[0]
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.plot([r["density"] for r in spans], [r["perplexity"] for r in spans], "o-", label="MoA spans (span-attn)")
    for r in spans:
        ax.annotate(f"budget {r['budget']:g}", (r["density"], r["perplexity"]), fontsize=7,
                    textcoords="offset points", xytext=(3, 3))
    ax.axhline(ref["perplexity"], color="gray", ls="--", lw=1, label=f"FP32 dense: {ref['perplexity']:.2f}")
    ax.set_xlabel("mean attention density at N=128 (kept causal pairs / dense)")
    ax.set_ylabel("held-out perplexity")
    ax.set_title(f"trained-llama, {samples} held-out KJV windows x 128 tokens", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _print_table(result: dict) -> None:
    print(f"{result['model']}: {result['samples']} held-out windows, {result['repeat']} interleaved rounds; "
          f"load {result['load_before']} -> {result['load_after']}")
    head = ["method", "density", "perplexity", "Δ %", "KL", "top-1", "call ms", "speedup"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in result["rows"]:
        dens = f"{r['density']:.3f}" if "density" in r else "—"
        kl = "—" if r["kl_divergence"] is None else f"{r['kl_divergence']:.3g}"
        top1 = "—" if r["top1_agreement"] is None else f"{100 * r['top1_agreement']:.1f}%"
        print(f"| {r['method']} | {dens} | {r['perplexity']:.2f} | {r['perplexity_change_pct']:+.2f} | {kl} | "
              f"{top1} | {r['call_ms']:.2f} | {r['speedup']:.2f}x |")


if __name__ == "__main__":
    sys.exit(_common.main("bench_trained_llm.py", __doc__, add_arguments, run))
