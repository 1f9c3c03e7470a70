"""Assemble an artifact folder for the ``onnx`` and ``ort`` targets.

Layout::

    model.onnx          the compiled graph (model.onnx.data beside it past 2 GB)
    model.ort.onnx      ORT-optimized graph (target ort)
    inputs.npz          example inputs (the fidelity inputs; Polygraphy's loader reads them)
    inputs.json         the same inputs in Polygraphy's JSON format (``polygraphy run --load-inputs``)
    genzip.json         manifest: spec, io, file hashes, fidelity, pass stats, versions
    report.md           human-readable summary
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx_ir as ir

from genzip.backends.artifact import MANIFEST, REPORT, hash_files, staged_folder, write_json
from genzip.backends.genai_config import write_genai_config
from genzip.backends.onnx_files import save_model
from genzip.backends.ort_backend import write_checked_optimized
from genzip.backends.precision_report import artifact_section
from genzip.backends.runner import EXAMPLE_INPUTS
from genzip.backends.trt_backend import write_engine
from genzip.describe import io_specs, op_histogram, versions
from genzip.errors import GenzipError
from genzip.metrics import MIN_COSINE, measure_fidelity
from genzip.ort_session import run_model
from genzip.providers import describe

MODEL_NAME = "model.onnx"
POLYGRAPHY_INPUTS = "inputs.json"


def _write_polygraphy_inputs(folder: str, feeds: dict[str, np.ndarray]) -> str:
    """The example inputs as Polygraphy's ``--load-inputs`` reads them: a JSON list of feed
    dicts, written by Polygraphy's own encoder so its reader always accepts it."""
    from polygraphy.json import save_json

    save_json([dict(feeds)], os.path.join(folder, POLYGRAPHY_INPUTS))
    return POLYGRAPHY_INPUTS


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


def _copy_extra_files(files: dict[str, str], folder: str) -> list[str]:
    """Copy what the source asks to ship (an LLM's tokenizer files: artifact path -> source
    path) into the artifact; returns the artifact paths, which the manifest then hashes."""
    for rel, src in files.items():
        dest = os.path.join(folder, rel)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copyfile(src, dest)
    return sorted(files)


@dataclasses.dataclass(frozen=True)
class Compiled:
    """What the compile driver hands the writer: the rewritten model and what checks it."""

    model: ir.Model
    source: Any  # frontend.SourceModel
    spec: str
    records: list
    reference: dict[str, np.ndarray]
    reference_label: str
    fp32_outputs: dict[str, np.ndarray] | None = None  # quantized pipelines: the FP32 export's outputs
    config: dict[str, Any] | None = None  # the resolved settings (genzip-compile --config ARTIFACT rebuilds it)


def _fidelity(compiled: Compiled, outputs: dict[str, np.ndarray], min_cosine: float) -> tuple[dict, dict | None]:
    """(fidelity, quant_fidelity); raises when the compiled model fails the gate."""
    fidelity = measure_fidelity(compiled.reference, outputs, compiled.reference_label)
    quant_fidelity = None
    if compiled.fp32_outputs is not None:
        # Example inputs are seeded apart from the calibration set: a held-out check.
        quant_fidelity = measure_fidelity(compiled.fp32_outputs, outputs, "fp32-export")
        quant_fidelity["inputs"] = "example inputs (held out: not the calibration set)"
    if not fidelity["cosine"] >= min_cosine:
        raise GenzipError(
            f"compiled model disagrees with its reference (cosine {fidelity['cosine']:.4f} < {min_cosine})",
            "if the passes are meant to approximate (window, span, low bits) lower --min-cosine; "
            "else rerun with --debug and --print-ir-after-change to find the pass that broke it",
        )
    return fidelity, quant_fidelity


def write_artifact(compiled: Compiled, out_dir: str, *, target: str, force: bool, trt_options=None,
                   min_cosine: float = MIN_COSINE, providers=None,
                   progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Write the artifact folder atomically; the cheap fidelity gate runs before any
    expensive build (TensorRT engine, ORT-optimized graph). ``progress`` gets the
    TensorRT build's phases."""
    model, source = compiled.model, compiled.source
    inputs, outputs = io_specs(model)
    histogram = op_histogram(model)
    with staged_folder(out_dir, force) as tmp:
        names = save_model(model, tmp, MODEL_NAME)
        np.savez(os.path.join(tmp, EXAMPLE_INPUTS), **source.example_inputs)
        names += [EXAMPLE_INPUTS, _write_polygraphy_inputs(tmp, source.example_inputs)]
        names += _copy_extra_files(source.info.get("extra_files") or {}, tmp)
        genai = None
        if "kv_cache" in source.info and target in ("ort", "onnx"):
            kv = source.info["kv_cache"]
            genai_names, genai = write_genai_config(model, kv, kv.get("model_type", ""), tmp)
            names += genai_names
        # The fidelity gate runs on the providers asked for (CPU by default); the ORT-optimized
        # graph below is a CPU artifact and is checked on CPU against these outputs.
        compiled_outputs = run_model(os.path.join(tmp, MODEL_NAME), source.example_inputs, providers=providers)
        fidelity, quant_fidelity = _fidelity(compiled, compiled_outputs, min_cosine)
        trt_section = ort_section = None
        if target == "trt":
            trt_names, trt_section = write_engine(tmp, MODEL_NAME, inputs, source.example_inputs, trt_options,
                                                  progress, source.info.get("dynamic_sizes"))
            names += trt_names
        if target == "ort":
            optimized, ort_section = write_checked_optimized(tmp, MODEL_NAME, source.example_inputs,
                                                             compiled_outputs)
            names += optimized
        # Plan JSON + bits plot + sensitivity table when sensitivity/mixed-precision ran.
        mixed, mixed_lines, mixed_files = artifact_section(model, tmp)
        names += mixed_files
        manifest: dict[str, Any] = {
            "genzip_version": versions()["genzip"],
            "source": source.source,
            "source_kind": source.kind,
            "target": target,
            "passes": compiled.spec,
            "model": MODEL_NAME,
            "inputs": inputs,
            "outputs": outputs,
            "files": hash_files(tmp, names),
            "fidelity": dict(fidelity, providers=describe(providers), min_cosine=min_cosine),
            "export_fidelity": source.fidelity,
            "pass_stats": [{"pass": r.spec, "modified": r.modified, "stats": r.stats} for r in compiled.records],
            "versions": versions(),
        }
        if quant_fidelity is not None:
            manifest["quant_fidelity"] = quant_fidelity
        if compiled.config is not None:
            manifest["config"] = compiled.config
        if mixed is not None:
            manifest["mixed_precision"] = mixed
        if trt_section is not None:
            manifest["trt"] = trt_section
        if ort_section is not None:
            manifest["ort"] = ort_section
        if "kv_cache" in source.info:
            manifest["kv_cache"] = source.info["kv_cache"]
        if genai is not None:
            manifest["genai"] = genai
        for key in ("family", "preset", "dynamic", "scheduler_config"):
            if key in source.info:
                manifest.setdefault("source_info", {})[key] = source.info[key]
        if source.info.get("dynamic_sizes"):  # non-batch dims kept dynamic: their ranges (--dynamic-axes)
            manifest.setdefault("source_info", {})["dynamic_sizes"] = source.info["dynamic_sizes"]
        write_json(os.path.join(tmp, MANIFEST), manifest)
        with open(os.path.join(tmp, REPORT), "w") as f:
            f.write(_report(manifest, compiled.records, histogram) + "".join(line + "\n" for line in mixed_lines))
    return manifest
