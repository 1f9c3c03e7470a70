"""``genzip run ARTIFACT [--inputs X.npz] [--json]``."""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from genzip.backends.runner import load_artifact, load_npz
from genzip.tools.cli_common import add_provider_flags, providers_from


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact", help="artifact folder written by genzip-compile")
    p.add_argument("--inputs", help=".npz of inputs keyed by input name (default: the artifact's example inputs)")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_provider_flags(p)


def _stats(a: np.ndarray) -> dict:
    f = a.astype(np.float64) if a.dtype.kind in "fiub" else a
    return {
        "shape": list(a.shape), "dtype": str(a.dtype),
        "mean": float(f.mean()) if a.size else 0.0, "std": float(f.std()) if a.size else 0.0,
        "min": float(f.min()) if a.size else 0.0, "max": float(f.max()) if a.size else 0.0,
        "finite": bool(np.isfinite(f).all()) if a.dtype.kind == "f" else True,
    }


def run(args: argparse.Namespace) -> int:
    model = load_artifact(args.artifact, providers=providers_from(args))
    feeds = load_npz(args.inputs) if args.inputs else model.example_inputs()
    outputs = model.run(feeds)
    result = {"backend": model.backend, "backend_reason": model.backend_reason,
              "providers": model.session.get_providers() if model.backend == "onnxruntime" else None,
              "outputs": {k: _stats(v) for k, v in outputs.items()}}
    if args.json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return 0
    on = f" on {', '.join(result['providers'])}" if result["providers"] else ""
    sys.stdout.write(f"backend: {model.backend}{on} ({model.backend_reason})\n")
    for name, s in result["outputs"].items():
        sys.stdout.write(
            f"{name}: {s['dtype']}{s['shape']} mean={s['mean']:.5g} std={s['std']:.5g} "
            f"min={s['min']:.5g} max={s['max']:.5g} finite={s['finite']}\n"
        )
    return 0
