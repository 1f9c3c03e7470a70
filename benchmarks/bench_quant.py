"""``python benchmarks/bench_quant.py``: ORT CPU latency and fidelity of int8 variants of one export.

    python benchmarks/bench_quant.py [MODEL] [--variants ...] [--repeat N] [--warmup N] [--samples N] [--json]

One process, one FP32 export (``MODEL``, default ``bench-dit``), and these variants:

* ``fp32``: the export as is;
* ``genzip-w8a8`` / ``genzip-w8a8-attn`` / ``genzip-w8a8-dynamic``: the genzip recipes of those names, run
  exactly as an ``ort`` artifact holds them: ``genzip.compile.compile_model`` compiles the export into a
  real artifact (target ``ort``, so the writer's fidelity gate and its check of the ORT-optimized graph
  apply) and the artifact runner (``genzip.backends.runner.load_artifact``) opens it, on the model file
  the runner picks (``model.ort.onnx``, ORT-optimized plus genzip's ORT fusions, when the artifact kept
  it; else ``model.onnx``);
* ``ort-dynamic``: ``onnxruntime.quantization.quantize_dynamic`` (int8 weights);
* ``ort-static``: ``quantize_static`` (QDQ, per-channel int8 weights, int8 activations).

Static variants calibrate on the preset's calibration set, the same samples for genzip
and ORT: the first ``--samples`` of it, handed to genzip's calibrating passes as
``data=calib.npz``. Fidelity (cosine, max abs error of the first output vs FP32) is
measured on the held-out example inputs. Latency: every variant runs once per round,
rounds interleaved; ``speedup = fp32_median / median`` (and the same from the minima,
steadier on a shared machine). ``build_s`` of a genzip variant is its whole compile.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time

import _common
import numpy as np
import onnx_ir as ir

from genzip.errors import GenzipError

# ORT's quantizer would map the opset-23 ``Attention`` to com.microsoft QAttention (a
# different op); every variant quantizes the same GEMM ops.
OPS = ["MatMul", "Gemm", "Conv"]
VARIANTS = ("fp32", "genzip-w8a8", "genzip-w8a8-attn", "genzip-w8a8-dynamic", "ort-dynamic", "ort-static")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default="bench-dit", help="preset (needs calibration inputs; default bench-dit)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list from {', '.join(VARIANTS)}")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--threads", type=int, default=None, help="ORT intra-op threads (default: ORT's choice)")
    p.add_argument("--samples", type=int, default=8, help="calibration samples for the static variants")
    p.add_argument("--json", action="store_true")


@dataclasses.dataclass
class Variant:
    """One timed model: an ORT session, and the file it runs (with why, for artifacts)."""

    session: object
    output_names: list[str] | None  # None: every output, in graph order
    path: str
    why: str = ""

    def __call__(self, feeds):
        return self.session.run(self.output_names, feeds)


def _with_calibration(spec: str, npz: str) -> str:
    """``spec`` with ``data=npz`` on every pass that would read the context's calibration set."""
    from genzip.passes import PassSpec, build_pipeline, print_pipeline
    from genzip.passes.infra.context import CALIBRATION

    pipeline = build_pipeline(spec)
    items = []
    for item, pass_ in zip(pipeline.specs, pipeline.passes):
        if CALIBRATION in pass_.needs():
            if "data" not in {f.name for f in dataclasses.fields(pass_.Options)}:
                raise GenzipError(f"pass '{item.name}' of '{spec}' calibrates but takes no data= option",
                                  "benchmark a recipe whose calibrating passes accept data=FILE.npz")
            item = PassSpec(item.name, (*item.options, ("data", npz)))
        items.append(item)
    return print_pipeline(items)


def _genzip(fp32_path: str, out: str, recipe: str, calib_npz: str, threads: int | None) -> Variant:
    """Compile ``recipe`` into an ort artifact at ``out`` and open it with the artifact runner."""
    from genzip.backends.ort_backend import artifact_model_path
    from genzip.backends.runner import load_artifact
    from genzip.compile import CompileOptions, compile_model
    from genzip.tools.recipes import expand_recipe

    spec = _with_calibration(expand_recipe(recipe), calib_npz)
    compile_model(fp32_path, out, CompileOptions(target="ort", passes=spec))
    model = load_artifact(out, threads=threads, prefer="onnxruntime")
    _, why = artifact_model_path(out, model.manifest)  # the file the runner opened, and why
    return Variant(model.session, list(model.output_names), model.model_path, why)


def _ort_static(fp32_path: str, out: str, calib) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(calib)

        def get_next(self):
            return next(self.items, None)

    quantize_static(fp32_path, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=OPS)


def _build(variant: str, fp32_path: str, folder: str, calib, calib_npz: str, threads: int | None) -> Variant:
    from genzip.ort_session import make_session

    if variant.startswith("genzip-"):
        return _genzip(fp32_path, os.path.join(folder, variant), variant.removeprefix("genzip-"), calib_npz, threads)
    path = fp32_path if variant == "fp32" else os.path.join(folder, f"{variant}.onnx")
    if variant == "ort-dynamic":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(fp32_path, path, weight_type=QuantType.QInt8, op_types_to_quantize=OPS)
    elif variant == "ort-static":
        _ort_static(fp32_path, path, calib)
    return Variant(make_session(path, threads=threads), None, path)


def _time(variant: Variant, feeds) -> float:
    start = time.perf_counter()
    variant(feeds)
    return (time.perf_counter() - start) * 1e3


def run(args: argparse.Namespace) -> int:
    from genzip.frontend import load_model
    from genzip.metrics import cosine, max_abs_err

    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or "fp32" not in variants:
        raise GenzipError(f"--variants {args.variants} must include fp32 and use only {', '.join(VARIANTS)}",
                          "pick from the listed names")
    if args.repeat < 1 or args.warmup < 0 or args.samples < 1:
        raise GenzipError("--repeat and --samples must be >= 1 and --warmup >= 0", "pass positive counts")
    source = load_model(args.model, seed=0)
    make_calib = source.info.get("calibration")
    if make_calib is None:
        raise GenzipError(f"'{args.model}' carries no calibration inputs", "use a preset (genzip presets)")
    calib = make_calib()[: args.samples]
    feeds = source.example_inputs
    with tempfile.TemporaryDirectory(prefix="genzip-bench-quant-") as folder:
        fp32_path = os.path.join(folder, "fp32.onnx")
        ir.save(source.model, fp32_path)
        # The same samples for genzip (calibrate{data=...}) and ORT's quantize_static.
        calib_npz = os.path.join(folder, "calib.npz")
        np.savez(calib_npz, **{name: np.stack([s[name] for s in calib]) for name in calib[0]})
        built, build_s = {}, {}
        for v in variants:
            start = time.perf_counter()
            built[v] = _build(v, fp32_path, folder, calib, calib_npz, args.threads)
            build_s[v] = time.perf_counter() - start
        outputs = {v: m(feeds)[0] for v, m in built.items()}
        for _ in range(args.warmup):
            for m in built.values():
                m(feeds)
        times: dict[str, list[float]] = {v: [] for v in variants}
        for _ in range(args.repeat):
            for v, m in built.items():
                times[v].append(_time(m, feeds))
    base = statistics.median(times["fp32"])
    rows = []
    for v in variants:
        med = statistics.median(times[v])
        best = min(times[v])
        rows.append({"variant": v, "median_ms": round(med, 3), "speedup": round(base / med, 3),
                     "min_ms": round(best, 3), "speedup_min": round(min(times["fp32"]) / best, 3),
                     "cosine": round(float(cosine(outputs["fp32"], outputs[v])), 6),
                     "max_abs_err": float(max_abs_err(outputs["fp32"], outputs[v])), "build_s": round(build_s[v], 2),
                     "model_file": os.path.basename(built[v].path),
                     **({"model_file_why": built[v].why} if built[v].why else {})})
    result = {"model": args.model, "repeat": args.repeat, "threads": args.threads, "rows": rows}
    if args.json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return 0
    sys.stdout.write(f"{args.model}: ORT CPU, {args.repeat} interleaved rounds, fidelity on held-out inputs\n")
    sys.stdout.write("| variant | median ms | speedup (median) | min ms | speedup (min) | cosine | max abs err |\n"
                     "|---|---|---|---|---|---|---|\n")
    for r in rows:
        sys.stdout.write(f"| {r['variant']} | {r['median_ms']:.2f} | {r['speedup']:.2f}x | {r['min_ms']:.2f} | "
                         f"{r['speedup_min']:.2f}x | {r['cosine']:.6f} | {r['max_abs_err']:.3g} |\n")
    for r in rows:
        if "model_file_why" in r:
            sys.stdout.write(f"{r['variant']}: the artifact runs {r['model_file_why']}\n")
    return 0


if __name__ == "__main__":
    sys.exit(_common.main("bench_quant.py", __doc__, add_arguments, run))
