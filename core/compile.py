"""``genzip.compile``: model reference -> passes -> verified artifact folder.

Everything that can be checked without the model (target, spec, output folder)
is checked before the model is loaded, so bad input fails fast and writes nothing.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx_ir as ir

from genzip.errors import GenzipError

logger = logging.getLogger(__name__)

TARGETS = ("onnx", "ort", "trt")


@dataclasses.dataclass
class CompileOptions:
    target: str = "ort"
    passes: str = ""
    force: bool = False
    seed: int = 0
    verify: str = "full"
    print_ir_after: frozenset[str] = frozenset()
    print_ir_after_change: bool = False
    pass_timing: bool = False
    reproducer_dir: str | None = None
    trt: Any = None  # backends.trt_build.TrtBuildOptions for target trt
    min_cosine: float = 0.99  # fidelity gate vs the reference; lossy passes may need less


def _stage(progress: Callable[[str], None] | None, message: str) -> None:
    if progress:
        progress(message)
    logger.info(message)


def run_ort(model_or_path: ir.Model | str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from genzip.backends.ort_backend import make_session

    source = model_or_path if isinstance(model_or_path, str) else ir.to_proto(model_or_path).SerializeToString()
    session = make_session(source)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def measure_fidelity(reference: dict[str, np.ndarray], outputs: dict[str, np.ndarray], label: str) -> dict[str, Any]:
    """Cosine and max abs error of the first output (the model's main result) vs the reference."""
    from genzip.frontend.compare import cosine, max_abs_err

    ref_name = next(iter(reference))
    out = outputs.get(ref_name)
    if out is None:
        out = next(iter(outputs.values()))
    return {
        "reference": label,
        "output": ref_name,
        "cosine": float(cosine(reference[ref_name], out)),
        "max_abs_err": float(max_abs_err(reference[ref_name], out)),
    }


def compile_model(
    model_ref: str,
    out_dir: str,
    options: CompileOptions | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Compile ``model_ref`` into the artifact folder ``out_dir``; return its manifest."""
    from genzip.backends.artifact import check_out_dir
    from genzip.passes import Instrumentation, build_pipeline, run_pipeline

    opts = options or CompileOptions()
    if opts.target not in TARGETS:
        raise GenzipError(f"unknown target '{opts.target}'", f"use one of {', '.join(TARGETS)}")
    if opts.target == "trt":
        from genzip.backends.trt_backend import require_tensorrt

        require_tensorrt()
    pipeline = build_pipeline(opts.passes)
    check_out_dir(out_dir, opts.force)

    from genzip.frontend import load_model
    from genzip.frontend.loader import classify_ref

    classify_ref(model_ref)

    _stage(progress, f"loading {model_ref}")
    source = load_model(model_ref, seed=opts.seed)
    feeds = source.example_inputs
    reference = source.info.get("reference_outputs")
    reference_label = "pytorch-eager"
    if reference is None:
        _stage(progress, "running the unmodified model for the fidelity reference")
        reference = run_ort(source.model, feeds)
        reference_label = "source-onnx"

    model = source.model
    inst = Instrumentation(
        verify=opts.verify,
        print_ir_after=opts.print_ir_after,
        print_ir_after_change=opts.print_ir_after_change,
        pass_timing=opts.pass_timing,
        reproducer_dir=opts.reproducer_dir,
        progress=(lambda i, n, name: _stage(progress, f"pass {i + 1}/{n}: {name}")) if progress else None,
    )
    # Quantized artifacts also record fidelity vs the FP32 export (before any pass).
    fp32_outputs = None
    if any(p.name == "quant" for p in pipeline.passes):
        # For an ONNX file the reference already is this model's ORT output.
        fp32_outputs = reference if reference_label == "source-onnx" else run_ort(model, feeds)
    from genzip.passes.quant_calib_data import calibration_source
    from genzip.passes.sensitivity_grad import torch_source

    # calibrate reads the model's calibration inputs from here (see passes/quant_calib_data.py),
    # sensitivity{metrics=grad} the PyTorch module genzip exported.
    with calibration_source(source.info.get("calibration")), torch_source(source.info.get("module")):
        records = run_pipeline(model, pipeline, inst)

    from genzip.backends.write import write_artifact

    _stage(progress, f"writing {opts.target} artifact to {out_dir}")
    return write_artifact(
        model,
        out_dir,
        target=opts.target,
        force=opts.force,
        source=source,
        spec=str(pipeline),
        records=records,
        reference=reference,
        reference_label=reference_label,
        trt_options=opts.trt,
        fp32_outputs=fp32_outputs,
        min_cosine=opts.min_cosine,
    )
