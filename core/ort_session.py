"""ONNX Runtime sessions with genzip's settings, for every layer that runs a model.

Passes (calibration, smoothing, sensitivity), the frontend's export check, the
backends' fidelity gate and the runtime all open sessions here, so they run the
same kernels with the same optimizer settings.
"""

from __future__ import annotations

import onnxruntime as ort

# ORT 1.32's MatMulAddFusion rewrites a Q/DQ MatMul + Add on static 3-D shapes into
# Reshape -> Gemm with a QuantizeLinear whose zero point type contradicts its
# output_dtype, and the session then fails to load (int8 activations, as TensorRT
# wants). Off everywhere: genzip's own bias fusion (backends.ort_fusions) covers the
# int8 case, and for fp32 it only trades MatMul + Add for Reshape + Gemm + Reshape.
DISABLED_OPTIMIZERS = ["MatMulAddFusion"]
PROVIDERS = ["CPUExecutionProvider"]
# On x86 CPUs without VNNI (AVX2), ORT's u8s8 int8 GEMM sums pairs of products in
# saturating int16 (vpmaddubsw): int8 models lose accuracy there (cosine 0.9972 vs
# 0.99987 on a 3-layer w8a8 MLP, measured on an AVX2 EPYC). This entry selects
# MLAS's exact AVX2 path; CPUs with VNNI are unaffected.
PRECISE_X64_INT8 = ("session.x64quantprecision", "1")


def session_options(threads: int | None = None, level: str = "all") -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = {
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    opts.log_severity_level = 3
    opts.add_session_config_entry(*PRECISE_X64_INT8)
    if threads:
        opts.intra_op_num_threads = threads
    return opts


def make_session(path_or_bytes: str | bytes, threads: int | None = None, level: str = "all",
                 options: ort.SessionOptions | None = None) -> ort.InferenceSession:
    return ort.InferenceSession(path_or_bytes, options or session_options(threads, level), providers=PROVIDERS,
                                disabled_optimizers=DISABLED_OPTIMIZERS)


def run_model(model_or_path, feeds: dict) -> dict:
    """Outputs by name of an ``onnx_ir.Model`` (or a model file) on ``feeds``."""
    import onnx_ir as ir

    source = model_or_path if isinstance(model_or_path, str) else ir.to_proto(model_or_path).SerializeToString()
    session = make_session(source)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))
