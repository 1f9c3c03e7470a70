"""``genzip bench-quant``: ORT CPU latency and fidelity of int8 variants of one export.

One process, one FP32 export (``MODEL``, default ``bench-dit``), and these variants:

* ``fp32``: the export as is;
* ``genzip-w8a8`` / ``genzip-w8a8-attn`` / ``genzip-w8a8-dynamic``: the genzip recipes of those names, as an
  ``ort`` artifact holds them (ORT-optimized, plus genzip's ORT fusions);
* ``ort-dynamic``: ``onnxruntime.quantization.quantize_dynamic`` (int8 weights);
* ``ort-static``: ``quantize_static`` (QDQ, per-channel int8 weights, int8 activations).

Static variants calibrate on the preset's calibration set (the same samples for
genzip and ORT); fidelity (cosine, max abs error of the first output vs FP32) is
measured on the held-out example inputs. Latency: every variant runs once per
round, rounds interleaved; ``speedup = fp32_median / median`` (and the same from the
minima, steadier on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

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


def _genzip(fp32_path: str, out: str, recipe: str, calib) -> None:
    from genzip.passes import build_pipeline, run_pipeline
    from genzip.passes.quant_calib_data import calibration_source
    from genzip.tools.recipes import expand_recipe

    from genzip.backends.ort_backend import optimize_file

    model = ir.load(fp32_path)
    with calibration_source(calib):
        run_pipeline(model, build_pipeline(expand_recipe(recipe)))
    # What an ort artifact holds: the ORT-optimized graph plus genzip's ORT fusions.
    ir.save(model, out + ".src.onnx")
    optimize_file(out + ".src.onnx", out)


def _ort_static(fp32_path: str, out: str, calib) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(calib)

        def get_next(self):
            return next(self.items, None)

    quantize_static(fp32_path, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=OPS)


def _build(variant: str, fp32_path: str, folder: str, calib) -> str:
    if variant == "fp32":
        return fp32_path
    out = os.path.join(folder, f"{variant}.onnx")
    if variant.startswith("genzip-"):
        _genzip(fp32_path, out, variant.removeprefix("genzip-"), calib)
    elif variant == "ort-dynamic":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(fp32_path, out, weight_type=QuantType.QInt8, op_types_to_quantize=OPS)
    else:
        _ort_static(fp32_path, out, calib)
    return out


def _time(session, feeds) -> float:
    start = time.perf_counter()
    session.run(None, feeds)
    return (time.perf_counter() - start) * 1e3


def run(args: argparse.Namespace) -> int:
    from genzip.backends.ort_backend import make_session
    from genzip.frontend import load_model
    from genzip.frontend.compare import cosine, max_abs_err

    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or "fp32" not in variants:
        raise GenzipError(f"--variants {args.variants} must include fp32 and use only {', '.join(VARIANTS)}",
                          "pick from the listed names")
    if args.repeat < 1 or args.warmup < 0:
        raise GenzipError("--repeat must be >= 1 and --warmup >= 0", "pass positive counts")
    source = load_model(args.model, seed=0)
    make_calib = source.info.get("calibration")
    if make_calib is None:
        raise GenzipError(f"'{args.model}' carries no calibration inputs", "use a preset (genzip presets)")
    calib = make_calib()[: args.samples]
    feeds = source.example_inputs
    with tempfile.TemporaryDirectory(prefix="genzip-bench-quant-") as folder:
        fp32_path = os.path.join(folder, "fp32.onnx")
        ir.save(source.model, fp32_path)
        sessions, build_s = {}, {}
        for v in variants:
            start = time.perf_counter()
            path = _build(v, fp32_path, folder, calib)
            build_s[v] = time.perf_counter() - start
            sessions[v] = make_session(path, threads=args.threads)
        outputs = {v: s.run(None, feeds)[0] for v, s in sessions.items()}
        for _ in range(args.warmup):
            for s in sessions.values():
                s.run(None, feeds)
        times: dict[str, list[float]] = {v: [] for v in variants}
        for _ in range(args.repeat):
            for v, s in sessions.items():
                times[v].append(_time(s, feeds))
    base = statistics.median(times["fp32"])
    rows = []
    for v in variants:
        med = statistics.median(times[v])
        best = min(times[v])
        rows.append({"variant": v, "median_ms": round(med, 3), "speedup": round(base / med, 3),
                     "min_ms": round(best, 3), "speedup_min": round(min(times["fp32"]) / best, 3),
                     "cosine": round(float(cosine(outputs["fp32"], outputs[v])), 6),
                     "max_abs_err": float(max_abs_err(outputs["fp32"], outputs[v])), "build_s": round(build_s[v], 2)})
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
    return 0
