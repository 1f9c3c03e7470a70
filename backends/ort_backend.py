"""ONNX Runtime backend: sessions, and the ORT-optimized model written into artifacts."""

from __future__ import annotations

import logging
import os

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

from genzip.backends.onnx_files import save_model
from genzip.backends.ort_fusions import fuse_integer_gemm_bias
from genzip.metrics import OPTIMIZED_MIN_COSINE, cosine
from genzip.ort_session import make_session, session_options
from genzip.providers import describe, is_cpu_only

logger = logging.getLogger("genzip")

OPTIMIZED_NAME = "model.ort.onnx"
# EXTENDED fusions keep the model portable across CPUs; ALL would add
# hardware-specific layouts (NCHWc) that are tied to the build machine.
OPTIMIZATION_LEVEL = "extended"
def artifact_model_path(folder: str, manifest: dict, providers=None) -> tuple[str, str]:
    """(path ORT should run, why) for an artifact: its stored ORT-optimized graph
    (genzip's ORT fusions included) when this ORT version wrote it and the session runs
    on the CPU provider it was optimized for, else the portable model, since an optimized
    graph may use kernels of the ORT and provider that produced it (genzip's integer
    GEMM + bias fusion is a CPU kernel)."""
    optimized = (manifest.get("ort") or {}).get("optimized_model")
    model = os.path.join(folder, manifest["model"])
    if not optimized:
        return model, "no ORT-optimized graph in the artifact"
    if not is_cpu_only(providers):
        return model, f"{optimized} was optimized for the CPU provider, this session runs on {describe(providers)[0]}"
    path = os.path.join(folder, optimized)
    wrote = (manifest.get("versions") or {}).get("onnxruntime")
    if wrote != ort.__version__:
        return model, f"{optimized} was written by onnxruntime {wrote}, this is {ort.__version__}"
    if not os.path.isfile(path):
        return model, f"{optimized} is missing"
    return path, f"{optimized} (ORT-optimized by onnxruntime {wrote})"


def optimize_file(source: str, target: str) -> list[str]:
    """ORT's graph optimizations, then genzip's fusions (``ort_fusions``), ``source`` -> ``target``.

    Returns the file names written next to ``target``.
    """
    opts = session_options(level=OPTIMIZATION_LEVEL)
    opts.optimized_model_filepath = target
    make_session(source, options=opts)
    model = ir.load(target)
    if not fuse_integer_gemm_bias(model):
        return [os.path.basename(target)]
    return save_model(model, os.path.dirname(target) or ".", os.path.basename(target))


def write_optimized(folder: str, source_name: str = "model.onnx") -> list[str]:
    """Let ORT (and genzip's ORT fusions) optimize the graph once; store it next to the model."""
    return optimize_file(os.path.join(folder, source_name), os.path.join(folder, OPTIMIZED_NAME))


# ORT's own errors are pybind classes deriving from Exception directly.
_ORT_ERRORS = (ort_errors.Fail, ort_errors.InvalidGraph, ort_errors.InvalidArgument,
               ort_errors.RuntimeException, ort_errors.NotImplemented)


def write_checked_optimized(folder: str, source_name: str, feeds: dict[str, np.ndarray],
                            expected: dict[str, np.ndarray]) -> tuple[list[str], dict]:
    """``write_optimized``, kept only if ORT loads the result and it reproduces ``expected``
    (the model's outputs on ``feeds``); returns (file names, the manifest's ``ort`` section).

    ORT can write optimized graphs it cannot load again (1.32, int8 GEMMs inside
    ``If`` branches: duplicate value names across branches), so nothing is trusted
    unchecked; a dropped graph leaves the reason in the manifest and runners use the model.
    """
    names = write_optimized(folder, source_name)
    path = os.path.join(folder, OPTIMIZED_NAME)
    reason = None
    try:
        got = make_session(path).run(list(expected), feeds)
    except _ORT_ERRORS as e:
        reason = f"ONNX Runtime cannot run its own optimized graph: {str(e).splitlines()[0][:300]}"
    else:
        worst = min(cosine(a, b) for a, b in zip(got, expected.values()))
        if not worst >= OPTIMIZED_MIN_COSINE:
            reason = f"the optimized graph disagrees with the model (cosine {worst:.6f})"
    if reason is None:
        return names, {"optimized_model": OPTIMIZED_NAME, "optimization_level": OPTIMIZATION_LEVEL}
    logger.warning("genzip: %s; the artifact keeps only %s", reason, source_name)
    for name in names:
        os.remove(os.path.join(folder, name))
    return [], {"optimized_model": None, "optimization_level": OPTIMIZATION_LEVEL, "skipped": reason}

