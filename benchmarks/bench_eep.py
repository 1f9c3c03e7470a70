"""``python benchmarks/bench_eep.py``: EEP expert pruning + merging on ``trained-moe``, quality beside speed.

    python benchmarks/bench_eep.py [--keeps 2,3] [--population 8] [--generations 10] [--seed 0]
        [--windows 8] [--heldout 16] [--random 3] [--new-tokens 32] [--rounds 3] [--work DIR] [--json]

One process. The model's top-k is 2, so a keep below 2 experts is not legal (the pass
refuses it); ``--keeps`` lists the legal keep counts measured (default 2 of 4 = 50%, 3 of 4).
For each keep K: ``genzip eep-search``'s own search (fit: the first ``--windows`` KJV
training-split windows of 128 tokens, tokenized with the model's tokenizer) gives the EEP
plan and the router-frequency baseline; ``--random`` random keep sets are drawn with the
seed. Then:

* **quality**: held-out perplexity (the first ``--heldout`` windows of 128 tokens of the
  KJV held-out chapters) of the unpruned model, EEP, the baseline and the mean of the
  random plans, in eager torch with each plan applied as ``expert-prune`` applies it
  (``tests/test_moe.py`` checks the two agree);
* **memory**: the weight bytes of the ``--kv-cache`` ``ort`` artifact compiled with
  ``expert-prune{plan=EEP}`` vs the unpruned one;
* **speed**: greedy decode of ``--new-tokens`` tokens after a held-out prompt of 64 tokens,
  every artifact interleaved round by round (``--rounds``, after one warm-up round),
  median decode tokens/s and the ratio vs unpruned.

Goal (issue 18): at 50% of the experts, EEP's perplexity increase over the unpruned
model is at most half the baseline's (``goal_met``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile

import _common
import numpy as np

from genzip.errors import GenzipError

PRESET = "trained-moe"


def _ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--keeps", type=_ints, default=[2, 3], help="experts kept per layer (default 2,3)")
    p.add_argument("--population", type=int, default=8)
    p.add_argument("--generations", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--windows", type=int, default=8, help="fit windows of 128 tokens (default 8)")
    p.add_argument("--heldout", type=int, default=16, help="held-out windows of 128 tokens (default 16)")
    p.add_argument("--random", type=int, default=3, help="random keep sets per keep (default 3)")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--work", default=None, help="where artifacts go (default: a temporary folder)")
    p.add_argument("--json", action="store_true")


def _weight_bytes(artifact: str) -> int:
    import onnx_ir as ir

    model = ir.load(os.path.join(artifact, "model.onnx"))
    return int(sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None))


def _compile(folder: str, out: str, passes: str) -> str:
    from genzip.compile import CompileOptions, compile_model

    compile_model(folder, out, CompileOptions(target="ort", passes=passes, kv_cache=True, min_cosine=0.0,
                                              force=True))
    return out


def run(args: argparse.Namespace) -> int:
    if any(k < 1 for k in args.keeps) or args.rounds < 1 or args.new_tokens < 1 or args.random < 0:
        raise GenzipError("bench_eep: --keeps, --rounds and --new-tokens must be >= 1, --random >= 0")
    import torch

    import genzip
    from genzip.runtime import _eval_data
    from genzip.searches import eep
    from genzip.tools.cli_common import Progress
    from genzip.tools.cmd_eep_search import load_moe, windows

    torch.set_num_threads(2)
    progress = Progress(not args.quiet)
    module, tokenizer, _ = load_moe(PRESET)
    _, e, k = eep.moe_experts.model_shape(module)
    bad = [keep for keep in args.keeps if not k <= keep <= e]
    if bad:
        raise GenzipError(f"bench_eep: keep {bad[0]} is not legal for {PRESET} (top-{k} routing, {e} experts)",
                          f"give keeps between {k} and {e}")
    ns = argparse.Namespace(text=None, seq=128, windows=args.windows, heldout=args.heldout)
    fit, held = windows(ns, module, tokenizer, PRESET)
    scorer = eep.PlanScorer(module, held)
    unpruned_loss = scorer.score(None)
    work = args.work or tempfile.mkdtemp(prefix="bench_eep_")
    folder = str(_eval_data.weights_folder(PRESET))
    progress(f"bench_eep: compiling the unpruned --kv-cache artifact into {work}")
    artifacts = {"unpruned": _compile(folder, os.path.join(work, "unpruned"), "")}
    rows = []
    for keep in args.keeps:
        progress(f"bench_eep: eep-search keep {keep} of {e}")
        result = eep.search(module, fit, keep=keep, population=args.population, generations=args.generations,
                            seed=args.seed, progress=progress)
        rng = np.random.default_rng(args.seed + 1)
        randoms = [scorer.score(eep.random_individual(rng, len(result.best.keep), e, keep).plan(e, k))
                   for _ in range(args.random)]
        plan = result.best.plan(e, k)
        plan_path = os.path.join(work, f"eep_keep{keep}.json")
        with open(plan_path, "w", encoding="utf-8") as f:
            json.dump(plan.to_json(), f, indent=1)
        losses = {"eep": scorer.score(plan), "baseline": scorer.score(result.baseline.plan(e, k))}
        if randoms:
            losses["random"] = float(np.mean(randoms))
        name = f"keep{keep}"
        progress(f"bench_eep: compiling expert-prune{{plan={plan_path}}}")
        artifacts[name] = _compile(folder, os.path.join(work, name), f"expert-prune{{plan={plan_path}}}")
        rows.append({"keep": keep, "experts": e, "fraction": keep / e, "evaluations": result.evals,
                     "cache_hits": result.cache_hits, "plan": plan_path,
                     **{f"{m}_perplexity": math.exp(v) for m, v in losses.items()}})
    prompt = held[0, :64].numpy()[None]
    models = {name: genzip.load(path, threads=2) for name, path in artifacts.items()}
    speeds: dict[str, list[float]] = {name: [] for name in models}
    for r in range(args.rounds + 1):  # round 0 warms up
        for name, model in models.items():
            gen = model.generate(prompt, max_new_tokens=args.new_tokens, eos_token_id=[])
            if r:
                speeds[name].append(gen.decode_tokens_per_s)
    base_speed = float(np.median(speeds["unpruned"]))
    base_bytes = _weight_bytes(artifacts["unpruned"])
    unpruned_ppl = math.exp(unpruned_loss)
    for row in rows:
        name = f"keep{row['keep']}"
        row["weight_bytes"] = _weight_bytes(artifacts[name])
        row["weight_ratio"] = row["weight_bytes"] / base_bytes
        row["decode_tokens_per_s"] = float(np.median(speeds[name]))
        row["decode_speedup"] = row["decode_tokens_per_s"] / base_speed
        for m in ("eep", "baseline", "random"):
            if f"{m}_perplexity" in row:
                row[f"{m}_increase"] = row[f"{m}_perplexity"] - unpruned_ppl
    summary = {"preset": PRESET, "top_k": k, "experts": e, "heldout_windows": len(held), "fit_windows": len(fit),
               "population": args.population, "generations": args.generations, "seed": args.seed,
               "unpruned_perplexity": unpruned_ppl, "unpruned_weight_bytes": base_bytes,
               "unpruned_decode_tokens_per_s": base_speed, "rows": rows,
               "illegal_keeps": [keep for keep in range(1, k)], "load": list(os.getloadavg())}
    half = [r for r in rows if r["keep"] * 2 == e]
    if half:
        r = half[0]
        summary["goal_met"] = bool(r["eep_increase"] <= 0.5 * r["baseline_increase"])
        summary["goal_ratio"] = r["eep_increase"] / r["baseline_increase"] if r["baseline_increase"] else None
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"unpruned: perplexity {unpruned_ppl:.2f}, weights {base_bytes / 1e6:.2f} MB, decode {base_speed:.0f} tok/s")
    for r in rows:
        print(f"keep {r['keep']}/{e}: EEP {r['eep_perplexity']:.2f} | baseline {r['baseline_perplexity']:.2f} | "
              f"random {r.get('random_perplexity', float('nan')):.2f} | weights {r['weight_ratio']:.2f}x | "
              f"decode {r['decode_speedup']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(_common.main("bench_eep.py", __doc__, add_arguments, run))
