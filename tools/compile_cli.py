"""``genzip-compile MODEL --target {onnx,ort,trt} --out DIR [--passes SPEC]``."""

from __future__ import annotations

import argparse
import os
import sys

from genzip._version import __version__
from genzip.compile import TARGETS, build_compile, compile_model, default_out, resolve_settings
from genzip.errors import GenzipError
from genzip.metrics import MIN_COSINE
from genzip.pipeline import compile_pipeline, pipeline_class
from genzip.tools.cli_common import Progress, add_common_flags, add_dist_flags, add_provider_flags, guarded


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="genzip-compile",
        description="Compile a model (ONNX file, Hugging Face folder, module:function, or preset) into an artifact folder.",
    )
    p.add_argument("model", nargs="?", default=None,
                   help="path.onnx | HF folder | package.module:function | preset (tiny-pixart, tiny-llama, bench-dit, "
                        "bench-dit-4k); may come from --config")
    p.add_argument("--target", default="ort", choices=TARGETS, help="artifact kind (default: ort)")
    p.add_argument("--out", help="artifact folder (default: ./<model>.<target>)")
    p.add_argument("--passes", action="append", default=[], metavar="SPEC",
                   help="pipeline, e.g. 'canonicalize-attn,dce'; for a pipeline folder also NAME=SPEC per component "
                        "(transformer/unet, text_encoder, vae; repeatable; a bare SPEC is the denoiser's)")
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
    p.add_argument("--inputs", metavar="FILE.npz",
                   help="example inputs (one array per model input, by name); fidelity is measured on them")
    p.add_argument("--calib-data", metavar="FILE.npz|DIR",
                   help="calibration set: .npz with samples on a new leading axis or on the batch axis, "
                        "or a folder of one-sample .npz files")
    sizes = p.add_argument_group("export sizes (presets, HF folders, module:function, Python models)")
    sizes.add_argument("--text-len", type=int, metavar="N",
                       help="caption tokens of a text-conditioned denoiser (default: the preset's, 77 for folders)")
    sizes.add_argument("--height", type=int, metavar="H",
                       help="latent height of a denoiser (image pixels / 8; a multiple of the patch size)")
    sizes.add_argument("--width", type=int, metavar="W", help="latent width of a denoiser (as --height)")
    sizes.add_argument("--sample-size", type=int, metavar="S", help="square latent size: --height S --width S")
    sizes.add_argument("--seq-len", type=int, metavar="N",
                       help="tokens of a causal LM's export (default: the preset's, 32 for folders; "
                            "at most max_position_embeddings)")
    sizes.add_argument("--dynamic-axes", default="none", metavar="none|auto|text,size,seq",
                       help="keep these axes dynamic in the export, each with an optional =MIN:MAX range "
                            "(e.g. text=1:120); the traced sizes above are the opt sizes; auto: every axis the "
                            "model and the passes allow (default: none, all static)")
    add_provider_flags(p)
    p.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"),
                   help="artifact precision: fp16/bf16 convert the float32 export after every other pass "
                        "(cast-float); the fidelity gate still compares with float32 eager PyTorch")
    p.add_argument("--config", metavar="FILE",
                   help="settings file (TOML, YAML, JSON) or an artifact's genzip.json; flags override it")
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
    trt.add_argument("--timing-cache", help="timing cache to read and update (default: the user cache dir, one per GPU and TensorRT version)")
    add_dist_flags(p)
    add_common_flags(p)
    p.add_argument("--version", action="version", version=f"genzip-compile {__version__}")
    return p


def explicit_settings(argv: list[str] | None) -> dict:
    """The settings the user typed (not argparse's defaults), so they override a config file."""
    quiet = build_parser()
    for action in quiet._actions:
        action.default = argparse.SUPPRESS
    given = vars(quiet.parse_args(argv))
    for flag in ("debug", "quiet", "config", "help", "version"):
        given.pop(flag, None)
    if "print_ir_after" in given:
        given["print_ir_after"] = frozenset(given["print_ir_after"])
    if "shapes" in given:
        given["shapes"] = tuple(given["shapes"])
    return given


def _run(args: argparse.Namespace) -> int:
    settings = resolve_settings(args.config, explicit_settings(args.argv))
    resolved = build_compile(settings)
    out = resolved.out or default_out(resolved.model, resolved.options.target)
    opts = resolved.options
    if opts.reproducer_dir is None:
        opts.reproducer_dir = os.path.abspath(out.rstrip("/")) + ".reproducer"
    if pipeline_class(resolved.model):
        manifest = compile_pipeline(resolved.model, out, opts, progress=Progress(not args.quiet), config=resolved.record,
                                    component_passes=resolved.component_passes)
        cosines = ", ".join(f"{part} {fid['cosine']:.6f}" for part, fid in manifest["fidelity"].items())
        sys.stdout.write(f"wrote {out} ({manifest['pipeline']}, target {opts.target}; cosine {cosines})\n")
        return 0
    if resolved.component_passes:
        name = next(iter(resolved.component_passes))
        raise GenzipError(f"--passes {name}=... names a pipeline component, and {resolved.model} is not a pipeline "
                          "folder genzip compiles whole", "pass --passes SPEC without a component name")
    manifest = compile_model(resolved.model, out, opts, progress=Progress(not args.quiet), config=resolved.record)
    fid = manifest["fidelity"]
    sys.stdout.write(
        f"wrote {out} (target {manifest['target']}; cosine {fid['cosine']:.6f} vs {fid['reference']})\n"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = argv
    return guarded("genzip-compile", _run, args)


if __name__ == "__main__":
    sys.exit(main())
