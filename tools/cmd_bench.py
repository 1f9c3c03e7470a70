"""``genzip bench ARTIFACT [--vs OTHER]``: medians measured in one interleaved run.

Interleaving (A, B, A, B, ...) exposes both artifacts to the same machine noise,
so the ratio is meaningful on a shared, noisy machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from genzip.backends.runner import load_artifact, load_npz
from genzip.errors import GenzipError
from genzip.tools.cli_common import add_provider_flags, providers_from


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact")
    p.add_argument("--vs", metavar="OTHER_ARTIFACT", help="second artifact; reports speedup = other / this")
    p.add_argument("--inputs", help=".npz inputs (default: the artifact's example inputs)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--threads", type=int, default=None, help="ORT intra-op threads (default: ORT's choice)")
    p.add_argument("--json", action="store_true")
    add_provider_flags(p)


def _time_once(model, feeds) -> float:
    start = time.perf_counter()
    model.session.run(model.output_names, feeds)
    return (time.perf_counter() - start) * 1e3


def run(args: argparse.Namespace) -> int:
    if args.repeat < 1 or args.warmup < 0:
        raise GenzipError("--repeat must be >= 1 and --warmup >= 0", "pass positive counts")
    providers = providers_from(args)
    models = [load_artifact(args.artifact, threads=args.threads, providers=providers)]
    if args.vs:
        models.append(load_artifact(args.vs, threads=args.threads, providers=providers))
    feeds = []
    for m in models:
        f = load_npz(args.inputs) if args.inputs else m.example_inputs()
        m.run(f)  # validates inputs once, outside the timed loop
        feeds.append(f)
    for _ in range(args.warmup):
        for m, f in zip(models, feeds):
            _time_once(m, f)
    times: list[list[float]] = [[] for _ in models]
    for _ in range(args.repeat):
        for i, (m, f) in enumerate(zip(models, feeds)):
            times[i].append(_time_once(m, f))
    result = {"artifact": args.artifact, "repeat": args.repeat, "median_ms": statistics.median(times[0]),
              "providers": models[0].session.get_providers()}
    if args.vs:
        result["other"] = args.vs
        result["other_median_ms"] = statistics.median(times[1])
        result["speedup"] = result["other_median_ms"] / result["median_ms"]
    if args.json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return 0
    sys.stdout.write(f"{args.artifact}: median {result['median_ms']:.3f} ms over {args.repeat} runs\n")
    if args.vs:
        sys.stdout.write(f"{args.vs}: median {result['other_median_ms']:.3f} ms\n")
        sys.stdout.write(f"speedup (other / this): {result['speedup']:.3f}x\n")
    return 0
