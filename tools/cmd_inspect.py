"""``genzip inspect ARTIFACT [--json] [--polygraphy]``: manifest, operator histogram, pass stats;
with ``--polygraphy``, the Polygraphy commands that inspect the artifact, run it in ONNX
Runtime on its own example inputs, and compare TensorRT against ONNX Runtime."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

import onnx_ir as ir

from genzip.backends.artifact import read_manifest
from genzip.backends.runner import dim_ranges
from genzip.describe import op_histogram

_REGISTER = ("python -c \"import sys; from genzip.plugins.trt_plugins import register; register(); "
             "from polygraphy.tools import main; sys.argv[0] = 'polygraphy'; sys.exit(main())\"")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact")
    p.add_argument("--json", action="store_true")
    p.add_argument("--polygraphy", action="store_true",
                   help="print Polygraphy commands for this artifact (inspect, run on ORT, compare TRT with ORT)")


def run(args: argparse.Namespace) -> int:
    manifest = read_manifest(args.artifact)
    model = ir.load(os.path.join(args.artifact, manifest["model"]))
    histogram = op_histogram(model)
    if args.polygraphy:
        sys.stdout.write(polygraphy_commands(args.artifact, manifest, model))
        return 0
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


def _shape_flags(artifact: str, inputs, ranges=None) -> str:
    """--trt-{min,opt,max}-shapes from the default optimization profile, when any dim is dynamic."""
    from genzip.backends.runner import EXAMPLE_INPUTS, load_npz
    from genzip.backends.trt_profiles import resolve_profiles

    if all(s["shape"] is not None and all(isinstance(d, int) for d in s["shape"]) for s in inputs):
        return ""
    path = os.path.join(artifact, EXAMPLE_INPUTS)
    examples = {k: v.shape for k, v in load_npz(path).items()} if os.path.isfile(path) else {}
    (profile,) = resolve_profiles([], inputs, examples, ranges)
    flags = []
    for which in ("min", "opt", "max"):
        # Quoted: '[' and ']' are glob characters in some shells.
        entries = " ".join(shlex.quote(f"{name}:[{','.join(map(str, getattr(r, which)))}]")
                           for name, r in profile.items())
        flags.append(f"--trt-{which}-shapes {entries}")
    return " " + " ".join(flags)


def polygraphy_commands(artifact: str, manifest, model: ir.Model) -> str:
    """The Polygraphy command lines a user runs on ``artifact`` (one per step, with a comment)."""
    from genzip.backends.write import POLYGRAPHY_INPUTS
    from genzip.metrics import MIN_COSINE
    from genzip.passes.lowering._trt_support import PLUGIN_DOMAIN, PLUGIN_OPS
    from genzip.tools import polygraphy_loader

    onnx_path = shlex.quote(os.path.join(artifact, manifest["model"]))
    inputs_json = os.path.join(artifact, POLYGRAPHY_INPUTS)
    if os.path.isfile(inputs_json):
        feed = f"--load-inputs {shlex.quote(inputs_json)}"
    else:  # artifacts written before inputs.json: the loader script reads inputs.npz
        feed = f"--data-loader-script {shlex.quote(f'{polygraphy_loader.__file__}:load_data')}"
    # TensorRT vs ORT is judged like genzip's own fidelity gate (cosine over each output,
    # the artifact's --min-cosine), not elementwise atol/rtol: TF32 kernels and reassociated
    # reductions move single elements while the output as a whole agrees.
    gate = manifest.get("fidelity", {}).get("min_cosine", MIN_COSINE)
    check = f"--compare-func cosine_similarity --cosine-similarity-threshold {gate}"
    plugins = sum(1 for n in ir.traversal.RecursiveGraphIterator(model.graph)
                  if n.domain == PLUGIN_DOMAIN and n.op_type in PLUGIN_OPS)
    trt_prefix = _REGISTER if plugins else "polygraphy"
    lines = [
        "# 1. the graph: inputs, outputs, layers and their attributes",
        f"polygraphy inspect model {onnx_path} --show layers attrs",
        "# 2. run it in ONNX Runtime on the artifact's example inputs (inputs.json = inputs.npz)",
        f"polygraphy run {onnx_path} --onnxrt {feed}",
        "# 3. on a machine with an NVIDIA GPU and `pip install genzip[trt]`: TensorRT vs ONNX Runtime",
        f"# (compared by cosine similarity >= {gate}, the gate this artifact passed at compile time;"
        " --compare-func psnr --psnr-threshold DB compares by PSNR instead)",
        f"{trt_prefix} run {onnx_path} --trt --onnxrt {feed} {check}"
        + _shape_flags(artifact, manifest["inputs"], dim_ranges(manifest)),
    ]
    if plugins:
        lines += [
            f"# the model has {plugins} genzip plugin node(s) (domain '{PLUGIN_DOMAIN}'): the python -c wrapper",
            "# registers genzip's TensorRT Python plugins in Polygraphy's process before it parses the model;",
            "# TensorRT >= 10.10 maps those nodes to the plugins by domain, and ONNX Runtime runs their function",
            "# bodies, so the comparison checks the plugins against the reference bodies",
        ]
    lines.append("# check TensorRT legality first, without a GPU: genzip lint --target trt " + shlex.quote(artifact))
    return "\n".join(lines) + "\n"
