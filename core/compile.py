"""``genzip.compile``: model reference -> passes -> verified artifact folder.

Everything that can be checked without the model (target, spec, output folder)
is checked before the model is loaded, so bad input fails fast and writes nothing.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from genzip.backends.artifact import check_out_dir
from genzip.backends.trt_backend import require_tensorrt
from genzip.backends.write import Compiled, write_artifact
from genzip.errors import GenzipError
from genzip.frontend import load_model
from genzip.frontend.loader import classify_ref
from genzip.metrics import MIN_COSINE
from genzip.ort_session import run_model
from genzip.passes import Instrumentation, build_pipeline, run_pipeline
from genzip.passes.infra.context import CALIBRATION, EXAMPLE_INPUTS, TORCH_MODULE, PassContext, check_needs
from genzip.passes.quant._kv_layout import quantize_feeds

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
    min_cosine: float = MIN_COSINE  # fidelity gate vs the reference; lossy passes may need less
    kv_cache: bool = False  # causal-LM folders: export the prefill/decode graph with past/present KV


# What each kind of source hands the passes (see frontend.loader): presets attach a
# seeded calibration set, every PyTorch source its eager module. Known before loading,
# so a pipeline that needs more fails in seconds, not after the export.
_PROVIDES = {
    "preset": frozenset({CALIBRATION, TORCH_MODULE, EXAMPLE_INPUTS}),
    "folder": frozenset({TORCH_MODULE, EXAMPLE_INPUTS}),
    "callable": frozenset({TORCH_MODULE, EXAMPLE_INPUTS}),
    "onnx": frozenset({EXAMPLE_INPUTS}),
}
_SOURCE_WORDS = {"preset": "this preset", "folder": "a Hugging Face folder", "callable": "a module:function source",
                 "onnx": "an ONNX file"}


def _stage(progress: Callable[[str], None] | None, message: str) -> None:
    if progress:
        progress(message)
    logger.info(message)


def pass_context(source, seed: int, progress: Callable[[str], None] | None) -> PassContext:
    """The context every pass of this compile receives, from what the frontend loaded."""
    return PassContext(
        example_inputs=source.example_inputs,
        calibration=source.info.get("calibration"),
        torch_module=source.info.get("module"),
        seed=seed,
        progress=progress,
    )


def compile_model(
    model_ref: str,
    out_dir: str,
    options: CompileOptions | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Compile ``model_ref`` into the artifact folder ``out_dir``; return its manifest."""
    opts = options or CompileOptions()
    if opts.target not in TARGETS:
        raise GenzipError(f"unknown target '{opts.target}'", f"use one of {', '.join(TARGETS)}")
    if opts.target == "trt":
        require_tensorrt()
    pipeline = build_pipeline(opts.passes)
    check_out_dir(out_dir, opts.force)
    kind = classify_ref(model_ref)
    check_needs(pipeline.passes, _PROVIDES[kind], _SOURCE_WORDS[kind])

    _stage(progress, f"loading {model_ref}")
    source = load_model(model_ref, seed=opts.seed, kv_cache=opts.kv_cache)
    return compile_source(source, out_dir, opts, progress, pipeline)


def compile_source(source, out_dir: str, options: CompileOptions, progress: Callable[[str], None] | None = None,
                   pipeline=None) -> dict[str, Any]:
    """Run ``options.passes`` over a loaded ``SourceModel`` (its model is rewritten in
    place) and write the artifact: several artifacts can share one export this way."""
    opts = options
    pipeline = pipeline if pipeline is not None else build_pipeline(opts.passes)
    check_out_dir(out_dir, opts.force)
    feeds = source.example_inputs
    reference = source.info.get("reference_outputs")
    reference_label = "pytorch-eager"
    if reference is None:
        _stage(progress, "running the unmodified model for the fidelity reference")
        reference = run_model(source.model, feeds)
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
        fp32_outputs = reference if reference_label == "source-onnx" else run_model(model, feeds)
    records = run_pipeline(model, pipeline, inst, pass_context(source, opts.seed, progress))
    # kv-quant turns the float past inputs into int8 + scales: the example inputs follow.
    source = dataclasses.replace(source, example_inputs=quantize_feeds(model, source.example_inputs))
    _stage(progress, f"writing {opts.target} artifact to {out_dir}")
    compiled = Compiled(model, source, str(pipeline), records, reference, reference_label, fp32_outputs)
    return write_artifact(compiled, out_dir, target=opts.target, force=opts.force, trt_options=opts.trt,
                          min_cosine=opts.min_cosine)
