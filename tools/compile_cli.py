"""``genzip-compile MODEL --target {onnx,ort,trt} --out DIR [--passes SPEC]``."""

from __future__ import annotations

import argparse
import os
import sys

from genzip._version import __version__
from genzip.compile import TARGETS, CompileOptions, compile_model
from genzip.errors import GenzipError
from genzip.metrics import MIN_COSINE
from genzip.tools.cli_common import Progress, add_common_flags, guarded
from genzip.tools.recipes import expand_recipe


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="genzip-compile",
        description="Compile a model (ONNX file, Hugging Face folder, module:function, or preset) into an artifact folder.",
    )
    p.add_argument("model", help="path.onnx | HF folder | package.module:function | preset (tiny-pixart, tiny-llama, bench-dit, bench-dit-4k)")
    p.add_argument("--target", default="ort", choices=TARGETS, help="artifact kind (default: ort)")
    p.add_argument("--out", help="artifact folder (default: ./<model>.<target>)")
    p.add_argument("--passes", default="", metavar="SPEC", help="pipeline, e.g. 'canonicalize-attn,dce'")
    p.add_argument("--recipe", help="named pipeline (see `genzip recipes`); combined with --passes after it")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out folder")
    p.add_argument("--seed", type=int, default=0, help="seed for preset weights and example inputs")
    p.add_argument("--verify", default="full", choices=("full", "structure", "none"),
                   help="checks after each pass that changed the graph (default: full)")
    p.add_argument("--print-ir-after", action="append", default=[], metavar="PASS",
                   help="print the IR after this pass (repeatable; 'all' for every pass)")
    p.add_argument("--print-ir-after-change", action="store_true", help="print the IR after every pass that changed it")
    p.add_argument("--pass-timing", action="store_true", help="print a per-pass timing and stats report")
    p.add_argument("--min-cosine", type=float, default=MIN_COSINE,
                   help=f"refuse an artifact whose cosine vs its reference is below this (default {MIN_COSINE})")
    p.add_argument("--kv-cache", action="store_true",
                   help="transformers causal-LM folders: export the decoder with past/present key-values "
                        "(one graph for prefill and decode; `genzip generate` runs it)")
    p.add_argument("--reproducer-dir", default=None,
                   help="where a failing pass leaves its reproducer (default: OUT.reproducer)")
    trt = p.add_argument_group("TensorRT (--target trt)")
    trt.add_argument("--shapes", action="append", default=[], metavar="NAME:MIN:OPT:MAX,...",
                     help="one optimization profile per flag, trtexec shape syntax (e.g. hidden_states:1x4x64x64:2x4x64x64:4x4x64x64); "
                          "default: from the manifest's symbolic dims")
    trt.add_argument("--precision", default="fp16", choices=("fp32", "fp16", "bf16"),
                     help="builder precision when the graph has no Q/DQ (Q/DQ graphs build strongly typed)")
    trt.add_argument("--workspace-gib", type=float, default=8.0, help="builder workspace limit")
    trt.add_argument("--hardware-compatible", action="store_true", help="engine portable across Ampere+ GPUs")
    trt.add_argument("--version-compatible", action="store_true", help="engine runs on later TensorRT 10.x runtimes")
    trt.add_argument("--plugin-form", default="auto", choices=("auto", "aot", "jit"),
                     help="genzip plugins as AOT Triton kernels in the engine (no Python at run time) or JIT "
                          "Python callbacks; auto: AOT where TensorRT >= 10.9 and triton allow")
    trt.add_argument("--timing-cache", help="timing cache to read and update (default: kept in the artifact)")
    add_common_flags(p)
    p.add_argument("--version", action="version", version=f"genzip-compile {__version__}")
    return p


def _default_out(model: str, target: str) -> str:
    base = os.path.basename(os.path.normpath(model.split(":")[0]))
    base = base[:-5] if base.endswith(".onnx") else base
    return f"{base or 'model'}.{target}"


def _run(args: argparse.Namespace) -> int:
    out = args.out or _default_out(args.model, args.target)
    spec = expand_recipe(args.recipe, args.passes) if args.recipe else args.passes
    trt_options = None
    if not 0.0 <= args.min_cosine <= 1.0:
        raise GenzipError(f"--min-cosine {args.min_cosine} is outside [0, 1]", "pass a cosine such as 0.99 or 0.9")
    if args.target == "trt":
        from genzip.backends.trt_build import TrtBuildOptions
        from genzip.backends.trt_profiles import parse_shapes

        for flag in args.shapes:
            parse_shapes(flag)  # a malformed --shapes fails before the model loads
        trt_options = TrtBuildOptions(
            precision=args.precision, shapes=tuple(args.shapes), workspace_gib=args.workspace_gib,
            hardware_compatible=args.hardware_compatible, version_compatible=args.version_compatible,
            timing_cache=args.timing_cache, plugin_form=args.plugin_form,
        )
    opts = CompileOptions(
        target=args.target,
        passes=spec,
        force=args.force,
        seed=args.seed,
        verify=args.verify,
        print_ir_after=frozenset(args.print_ir_after),
        print_ir_after_change=args.print_ir_after_change,
        pass_timing=args.pass_timing,
        reproducer_dir=args.reproducer_dir or os.path.abspath(out.rstrip("/")) + ".reproducer",
        trt=trt_options,
        min_cosine=args.min_cosine,
        kv_cache=args.kv_cache,
    )
    manifest = compile_model(args.model, out, opts, progress=Progress(not args.quiet))
    fid = manifest["fidelity"]
    sys.stdout.write(
        f"wrote {out} (target {manifest['target']}; cosine {fid['cosine']:.6f} vs {fid['reference']})\n"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return guarded("genzip-compile", _run, args)


if __name__ == "__main__":
    sys.exit(main())
