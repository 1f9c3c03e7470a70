"""``python benchmarks/bench_ray.py``: the searches on 1 and 2 Ray workers vs serial, in one run.

    python benchmarks/bench_ray.py [MODEL] [--include RE] [--formats F,..] [--samples N]
        [--plan-steps S] [--artifact DIR] [--rounds R] [--json]

One process, one local Ray cluster (``--workers`` CPUs, default 2). Variants, interleaved
round by round so load drifts hit them alike:

* ``serial``: the path genzip runs without ``--workers`` (one ORT session here, ORT's
  default thread count);
* ``ray-1``: one single-threaded Ray worker (the scale-out baseline);
* ``ray-N``: N single-threaded Ray workers.

Searches:

* **sensitivity**: ``annotate-precision{include=RE},sensitivity{...use-cache=false}`` on
  MODEL's calibration set (``--include`` narrows the sweep to some layers; units =
  layers x formats); each variant's sensitivity JSON must be identical to serial's;
* **plan** (``--plan-steps`` > 0): ``genzip plan``'s DiTFastAttn greedy search on a
  share-attn artifact of MODEL (``--artifact``, or compiled here), one condition;
  plans must be identical. The sequential part is counted: per step one reference
  call, one commit call and, per layer, the waves of candidates.

Reports wall seconds per variant (median over rounds), the speedups, units, bytes of
the arguments and results of one unit (pickled), the one-time worker payload, and the
load average before and after.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import pickle
import statistics
import sys
import tempfile
import time

import _common


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default="bench-dit", help="a DiT preset with calibration data (bench-dit)")
    p.add_argument("--include", default=r"transformer_blocks\.0\.",
                   help="annotate-precision include regex: the layers swept (default: block 0)")
    p.add_argument("--formats", default="w4a16,w8a8", help="sensitivity candidates")
    p.add_argument("--samples", type=int, default=2, help="calibration samples per probe")
    p.add_argument("--plan-steps", type=int, default=3, help="plan search steps (0: skip the plan search)")
    p.add_argument("--delta", type=float, default=0.05, help="plan search threshold")
    p.add_argument("--artifact", help="a share-attn artifact of MODEL (default: compiled into a temp folder)")
    p.add_argument("--workers", type=int, default=2, help="N of the ray-N variant (and the cluster's CPUs)")
    p.add_argument("--rounds", type=int, default=1, help="interleaved rounds (median reported)")
    p.add_argument("--json", action="store_true")


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _sensitivity_bench(args, variants, rounds):
    import onnx
    import onnx_ir as ir

    from genzip.frontend import load_model
    from genzip.metadata import SENSITIVITY_KEY
    from genzip.passes import build_pipeline, run_pipeline
    from genzip.passes.infra.context import PassContext

    source = load_model(args.model, seed=0)
    calib = source.info["calibration"]()
    fp_bytes = ir.to_proto(source.model).SerializeToString()
    spec = (f"annotate-precision{{include={args.include}}},"
            f"sensitivity{{candidates={args.formats} samples={args.samples} metrics=sqnr use-cache=false}}")
    times = {name: [] for name in variants}
    bodies, stats = {}, {}
    for _ in range(rounds):
        for name, executor in variants.items():
            model = ir.from_proto(onnx.ModelProto.FromString(fp_bytes))
            context = PassContext(calibration=calib, executor=executor)
            seconds, records = _timed(lambda m=model, c=context: run_pipeline(m, build_pipeline(spec), context=c))
            times[name].append(seconds)
            bodies[name] = model.metadata_props[SENSITIVITY_KEY]
            stats = records[-1].stats
    units = stats["layers"] * len(args.formats.split(","))
    picked = [calib[0]] * args.samples
    unit_bytes = len(pickle.dumps((0, args.formats.split(",")[0]))) + len(pickle.dumps([0.0]))
    return {"search": "sensitivity", "spec": spec, "layers": stats["layers"], "units": units,
            "probe_runs": stats["runs"], "identical": len(set(bodies.values())) == 1,
            "bytes_per_unit": unit_bytes, "worker_payload_bytes": len(fp_bytes) + len(pickle.dumps(picked)),
            "seconds": times}


def _plan_bench(args, variants, rounds, tmp):
    from genzip.runtime import sampler
    from genzip.runtime.model import PlannedModel
    from genzip.searches import ditfastattn as search
    from genzip.tools import compile_cli

    folder = args.artifact
    if folder is None:
        folder = os.path.join(tmp, "share")
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the report
            rc = compile_cli.main([args.model, "--target", "ort", "--out", folder, "--passes",
                                   "canonicalize-attn,share-attn", "--quiet"])
        if rc != 0:
            raise SystemExit(rc)
    model = PlannedModel(folder)
    c, u = sampler.default_conditioning(model, 1, seed=0)
    times = {name: [] for name in variants}
    results = {}
    for _ in range(rounds):
        for name, executor in variants.items():
            seconds, res = _timed(lambda e=executor: search.greedy_search(
                model, c, u, delta=args.delta, steps=args.plan_steps, cfg=4.5,
                executor=e))
            times[name].append(seconds)
            results[name] = res
    serial = results["serial"]
    # Moved once per step (not per unit): the step's feeds, reference output and caches,
    # i.e. per layer one block output and one residual of the CFG pair (fp32, batch 2).
    cache_bytes = sum(4 * 2 * math.prod(d for d in lay[key][1:] if isinstance(d, int))
                      for lay in model.layout.layers for key in ("block_shape", "residual_shape"))
    step_bytes = cache_bytes + 2 * serial.latents.nbytes * 2 + c.nbytes + u.nbytes
    return {"search": "plan", "artifact": folder, "steps": args.plan_steps, "layers": model.layers,
            "delta": args.delta, "identical": all(r.plan == serial.plan and r.losses == serial.losses
                                                  for r in results.values()),
            "calls": {k: r.calls for k, r in results.items()}, "max_calls": serial.max_calls,
            "methods": serial.plan.counts(), "seconds": times,
            "bytes_per_unit": len(pickle.dumps(tuple(row[-1] for row in serial.plan.methods))) + len(pickle.dumps(0.0)),
            "bytes_per_step_broadcast": step_bytes}


def run(args: argparse.Namespace) -> int:
    from genzip.parallel import RayExecutor

    load0 = os.getloadavg()
    with RayExecutor(workers=args.workers) as cluster, tempfile.TemporaryDirectory() as tmp:
        variants = {"serial": None, "ray-1": cluster.sized(1), f"ray-{args.workers}": cluster.sized(args.workers)}
        report = {"model": args.model, "workers": args.workers, "rounds": args.rounds, "cpus": os.cpu_count()}
        sens = _sensitivity_bench(args, variants, args.rounds)
        report["sensitivity"] = sens
        if args.plan_steps > 0:
            report["plan"] = _plan_bench(args, variants, args.rounds, tmp)
    report["loadavg_before"], report["loadavg_after"] = load0, os.getloadavg()
    for key in ("sensitivity", "plan"):
        if key not in report:
            continue
        med = {k: statistics.median(v) for k, v in report[key]["seconds"].items()}
        report[key]["median_s"] = med
        report[key][f"speedup_ray{args.workers}_vs_ray1"] = med["ray-1"] / med[f"ray-{args.workers}"]
        report[key][f"speedup_ray{args.workers}_vs_serial"] = med["serial"] / med[f"ray-{args.workers}"]
    if args.json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        for key in ("sensitivity", "plan"):
            if key in report:
                r = report[key]
                sys.stdout.write(f"{key}: " + ", ".join(f"{k} {v:.1f} s" for k, v in r["median_s"].items())
                                 + f"; ray-{args.workers} vs ray-1 {r[f'speedup_ray{args.workers}_vs_ray1']:.2f}x, "
                                 f"identical {r['identical']}\n")
        sys.stdout.write(f"load average {load0[0]:.1f} -> {report['loadavg_after'][0]:.1f}\n")
    return 0


if __name__ == "__main__":
    sys.exit(_common.main("bench_ray.py", __doc__, add_arguments, run))
