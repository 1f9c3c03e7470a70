"""``genzip inspect ARTIFACT [--json]``: manifest, operator histogram, pass stats."""

from __future__ import annotations

import argparse
import json
import os
import sys

import onnx_ir as ir

from genzip.backends.artifact import read_manifest
from genzip.describe import op_histogram


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact")
    p.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    manifest = read_manifest(args.artifact)
    model = ir.load(os.path.join(args.artifact, manifest["model"]))
    histogram = op_histogram(model)
    if args.json:
        sys.stdout.write(json.dumps({"manifest": manifest, "ops": histogram}, indent=2) + "\n")
        return 0
    w = sys.stdout.write
    fid = manifest["fidelity"]
    w(f"artifact: {args.artifact}\nsource:   {manifest['source']}\ntarget:   {manifest['target']}\n")
    w(f"passes:   {manifest['passes'] or '(none)'}\n")
    w(f"fidelity: cosine {fid['cosine']:.6f}, max abs err {fid['max_abs_err']:.3g} vs {fid['reference']}\n")
    w("inputs:\n" + "".join(f"  {s['name']}: {s['dtype']} {s['shape']}\n" for s in manifest["inputs"]))
    w("outputs:\n" + "".join(f"  {s['name']}: {s['dtype']} {s['shape']}\n" for s in manifest["outputs"]))
    w("ops:\n" + "".join(f"  {op:<28} {n}\n" for op, n in histogram.items()))
    w("pass stats:\n")
    for rec in manifest["pass_stats"]:
        stats = " ".join(f"{k}={v}" for k, v in rec["stats"].items())
        w(f"  {rec['pass']}: modified={rec['modified']} {stats}\n")
    w("files:\n" + "".join(f"  {name} {digest[:16]}\n" for name, digest in manifest["files"].items()))
    return 0
