"""``genzip lint --target trt ARTIFACT [--trt-version X] [--compute-capability 9.0] [--json]``.

Checks, without TensorRT, whether TensorRT's ONNX parser and builder would take
the artifact's model (rules: ``backends.trt_lint``). ARTIFACT is an artifact
folder or a plain ``.onnx`` file. Exit codes: 0 clean, 1 findings, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import onnx_ir as ir
from google.protobuf.message import DecodeError

from genzip.backends.artifact import MANIFEST, read_manifest
from genzip.errors import GenzipError
from genzip.passes.lowering import _trt_support as trt_support


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact", help="artifact folder (or a .onnx file)")
    p.add_argument("--target", default="trt", choices=("trt",), help="the backend whose rules apply (default: trt)")
    p.add_argument("--trt-version", default=trt_support.DEFAULT_TRT_VERSION,
                   help=f"TensorRT release to check against (default {trt_support.DEFAULT_TRT_VERSION}; "
                        "before 10.14 the parser has no ONNX Attention)")
    p.add_argument("--compute-capability", default=trt_support.DEFAULT_COMPUTE_CAPABILITY,
                   help="target GPU, e.g. 9.0 (H100), 8.9 (L4), 8.0 (A100); decides FP8/FP4 legality")
    p.add_argument("--json", action="store_true", help="print findings as JSON")


def load_for_lint(path: str) -> tuple[ir.Model, str]:
    """The model at ``path`` (artifact folder or .onnx file) and the file it came from."""
    if not os.path.exists(path):
        raise GenzipError(f"artifact {path} does not exist", "pass a folder written by genzip-compile or a .onnx file")
    if os.path.isdir(path) or os.path.basename(path) == MANIFEST:
        folder = path if os.path.isdir(path) else os.path.dirname(path)
        model_path = os.path.join(folder, read_manifest(folder)["model"])
    elif path.endswith(".onnx"):
        model_path = path
    else:
        raise GenzipError(f"{path} is neither an artifact folder nor a .onnx file",
                          "pass a folder written by genzip-compile or a model.onnx")
    if not os.path.isfile(model_path):
        raise GenzipError(f"model file {model_path} does not exist", "pass a folder written by genzip-compile")
    try:
        return ir.load(model_path), model_path
    except (DecodeError, OSError) as e:
        raise GenzipError(f"{model_path} is not a readable ONNX model ({type(e).__name__})",
                          "recompile the artifact") from None


def run(args: argparse.Namespace) -> int:
    from genzip.backends.trt_lint import lint_model

    version = trt_support.version_str(trt_support.parse_version(args.trt_version))
    model, model_path = load_for_lint(args.artifact)
    findings = lint_model(model, args.trt_version, args.compute_capability)
    if args.json:
        sys.stdout.write(json.dumps({
            "model": model_path, "target": args.target, "trt_version": version,
            "compute_capability": args.compute_capability, "clean": not findings,
            "findings": [f.__dict__ for f in findings],
        }, indent=2) + "\n")
    else:
        for f in findings:
            sys.stdout.write(f.line() + "\n")
        verdict = f"{len(findings)} finding(s)" if findings else "clean"
        sys.stdout.write(f"{model_path}: {verdict} for TensorRT {version}, compute capability "
                         f"{args.compute_capability}\n")
    return 1 if findings else 0
