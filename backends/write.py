"""Assemble an artifact folder for the ``onnx`` and ``ort`` targets.

Layout::

    model.onnx          the compiled graph (model.onnx.data beside it past 2 GB)
    model.ort.onnx      ORT-optimized graph (target ort)
    inputs.npz          example inputs (the fidelity inputs; Polygraphy's loader reads them)
    genzip.json         manifest: spec, io, file hashes, fidelity, pass stats, versions
    report.md           human-readable summary
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import onnx_ir as ir

from genzip.backends.artifact import MANIFEST, REPORT, hash_files, staged_folder, write_json
from genzip.backends.onnx_files import save_model
from genzip.backends.runner import EXAMPLE_INPUTS
from genzip.errors import GenzipError

MODEL_NAME = "model.onnx"
# Targets whose artifacts carry an engine built here (see trt_backend.require_tensorrt).
ENGINE_TARGETS = ("trt",)
# An export or pass pipeline below this cosine vs its reference is broken, not lossy.
MIN_COSINE = 0.99


def _report(manifest: dict[str, Any], records, histogram: dict[str, int]) -> str:
    fid = manifest["fidelity"]
    lines = [
        f"# genzip artifact: {manifest['source']}",
        "",
        f"- target: `{manifest['target']}`",
        f"- passes: `{manifest['passes'] or '(none)'}`",
        f"- fidelity vs {fid['reference']}: cosine {fid['cosine']:.6f}, max abs err {fid['max_abs_err']:.3g}",
    ]
    if manifest.get("export_fidelity"):
        ef = manifest["export_fidelity"]
        lines.append(f"- export check vs {ef['reference']}: cosine {ef['cosine']:.6f}, max abs err {ef['max_abs_err']:.3g}")
    if manifest.get("quant_fidelity"):
        qf = manifest["quant_fidelity"]
        lines.append(f"- quantized vs {qf['reference']} on held-out inputs: cosine {qf['cosine']:.6f}, max abs err {qf['max_abs_err']:.3g}")
    lines += ["", "## Passes", "", "| pass | modified | seconds | stats |", "|---|---|---|---|"]
    for r in records:
        stats = ", ".join(f"{k}={v}" for k, v in r.stats.items())
        lines.append(f"| `{r.spec}` | {r.modified} | {r.seconds:.3f} | {stats} |")
    lines += ["", "## Inputs", ""]
    lines += [f"- `{s['name']}`: {s['dtype']} {s['shape']}" for s in manifest["inputs"]]
    lines += ["", "## Outputs", ""]
    lines += [f"- `{s['name']}`: {s['dtype']} {s['shape']}" for s in manifest["outputs"]]
    lines += ["", "## Operators", "", "| op | count |", "|---|---|"]
    lines += [f"| {op} | {n} |" for op, n in histogram.items()]
    lines += ["", "## Files", ""]
    lines += [f"- `{name}` sha256 `{digest}`" for name, digest in manifest["files"].items()]
    return "\n".join(lines) + "\n"


def write_artifact(
    model: ir.Model,
    out_dir: str,
    *,
    target: str,
    force: bool,
    source,
    spec: str,
    records,
    reference: dict[str, np.ndarray],
    reference_label: str,
    trt_options=None,
    fp32_outputs: dict[str, np.ndarray] | None = None,
    min_cosine: float = MIN_COSINE,
) -> dict[str, Any]:
    from genzip.compile import measure_fidelity, run_ort
    from genzip.describe import io_specs, op_histogram, versions

    inputs, outputs = io_specs(model)
    histogram = op_histogram(model)
    with staged_folder(out_dir, force) as tmp:
        names = save_model(model, tmp, MODEL_NAME)
        np.savez(os.path.join(tmp, EXAMPLE_INPUTS), **source.example_inputs)
        names.append(EXAMPLE_INPUTS)
        trt_section = None
        if target == "trt":
            from genzip.backends.trt_backend import write_engine

            trt_names, trt_section = write_engine(tmp, MODEL_NAME, inputs, source.example_inputs, trt_options)
            names += trt_names
        compiled_outputs = run_ort(os.path.join(tmp, MODEL_NAME), source.example_inputs)
        ort_section = None
        if target == "ort":
            from genzip.backends.ort_backend import write_checked_optimized

            optimized, ort_section = write_checked_optimized(tmp, MODEL_NAME, source.example_inputs,
                                                             compiled_outputs)
            names += optimized
        fidelity = measure_fidelity(reference, compiled_outputs, reference_label)
        quant_fidelity = None
        if fp32_outputs is not None:
            # Example inputs are seeded apart from the calibration set: a held-out check.
            quant_fidelity = measure_fidelity(fp32_outputs, compiled_outputs, "fp32-export")
            quant_fidelity["inputs"] = "example inputs (held out: not the calibration set)"
        if not fidelity["cosine"] >= min_cosine:
            raise GenzipError(
                f"compiled model disagrees with its reference (cosine {fidelity['cosine']:.4f} < {min_cosine})",
                "if the passes are meant to approximate (window, span, low bits) lower --min-cosine; "
                "else rerun with --debug and --print-ir-after-change to find the pass that broke it",
            )
        from genzip.passes.mixed_precision_report import artifact_section

        # Plan JSON + bits plot + sensitivity table when sensitivity/mixed-precision ran.
        mixed, mixed_lines, mixed_files = artifact_section(model, tmp)
        names += mixed_files
        manifest: dict[str, Any] = {
            "genzip_version": versions()["genzip"],
            "source": source.source,
            "source_kind": source.kind,
            "target": target,
            "passes": spec,
            "model": MODEL_NAME,
            "inputs": inputs,
            "outputs": outputs,
            "files": hash_files(tmp, names),
            "fidelity": fidelity,
            "export_fidelity": source.fidelity,
            "pass_stats": [{"pass": r.spec, "modified": r.modified, "stats": r.stats} for r in records],
            "versions": versions(),
        }
        if quant_fidelity is not None:
            manifest["quant_fidelity"] = quant_fidelity
        if mixed is not None:
            manifest["mixed_precision"] = mixed
        if trt_section is not None:
            manifest["trt"] = trt_section
        if ort_section is not None:
            manifest["ort"] = ort_section
        for key in ("family", "preset", "dynamic"):
            if key in source.info:
                manifest.setdefault("source_info", {})[key] = source.info[key]
        write_json(os.path.join(tmp, MANIFEST), manifest)
        with open(os.path.join(tmp, REPORT), "w") as f:
            f.write(_report(manifest, records, histogram) + "".join(line + "\n" for line in mixed_lines))
    return manifest
