"""ONNX Runtime sessions with genzip's settings, for every layer that runs a model.

Passes (calibration, smoothing, sensitivity), the frontend's export check, the
backends' fidelity gate and the runtime all open sessions here, so they run the
same kernels with the same optimizer settings.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator

import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from genzip.errors import GenzipError
from genzip.providers import resolve_providers

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
    # Fatal only: a failing node is reported as an exception (turned into one line by
    # ort_failure); ORT's own error log would print it a second time, unformatted.
    opts.log_severity_level = 4
    opts.add_session_config_entry(*PRECISE_X64_INT8)
    if threads:
        opts.intra_op_num_threads = threads
    return opts


def make_session(path_or_bytes: str | bytes, threads: int | None = None, level: str = "all",
                 options: ort.SessionOptions | None = None, providers=None) -> ort.InferenceSession:
    """A session with genzip's settings on ``providers`` (``genzip.providers.resolve_providers``'
    result, or anything it takes; None: CPU only).

    ONNX Runtime silently drops a provider that fails to initialize (a CUDA build without
    a usable GPU): the session is refused then, so a run never claims a device it is not on.
    """
    chosen = resolve_providers(providers) if providers is not None and not _resolved(providers) else providers
    chosen = chosen or tuple((name, {}) for name in PROVIDERS)
    session = ort.InferenceSession(path_or_bytes, options or session_options(threads, level),
                                   providers=[name for name, _ in chosen],
                                   provider_options=[dict(opts) for _, opts in chosen],
                                   disabled_optimizers=DISABLED_OPTIMIZERS)
    got = session.get_providers()
    if chosen[0][0] not in got:
        raise GenzipError(f"ONNX Runtime did not start {chosen[0][0]} (the session runs on {', '.join(got)})",
                          "check the CUDA/TensorRT libraries and the device (nvidia-smi), or run on --device cpu")
    return session


def _resolved(providers) -> bool:
    return isinstance(providers, tuple) and all(isinstance(p, tuple) and isinstance(p[1], dict) for p in providers)


# What ONNX Runtime raises for a model it cannot load or run (never genzip's own bugs).
ORT_ERRORS = (
    ort_state.Fail,
    ort_state.InvalidArgument,
    ort_state.InvalidGraph,
    ort_state.InvalidProtobuf,
    ort_state.NoSuchFile,
    ort_state.NotImplemented,
    ort_state.RuntimeException,
)
_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ")
_NODE = re.compile(r"running (\S+) node\. Name:'([^']*)'(?: Status Message: (.*))?", re.S)
# Serialized in memory below this size; above it through a temporary file with external
# data (protobuf cannot hold more than 2 GiB, and one in-memory copy doubles the peak).
IN_MEMORY_LIMIT = 1 << 30


def ort_failure(e: Exception) -> str:
    """One line from an ORT exception: ``node 'NAME' (Op): message`` when ORT named a node."""
    text = _PREFIX.sub("", str(e).strip())
    m = _NODE.search(text)
    if m:
        op, name, msg = m.group(1), m.group(2), (m.group(3) or "").strip()
        first = msg.splitlines()[0] if msg else "failed"
        return f"node '{name}' ({op}): {first}"
    return text.splitlines()[0] if text else type(e).__name__


def _initializer_bytes(model) -> int:
    import onnx_ir as ir

    total = 0
    for graph in (model.graph, *model.graph.subgraphs()):
        for value in graph.initializers.values():
            tensor = value.const_value
            if tensor is not None:
                total += tensor.nbytes if not isinstance(tensor, ir.ExternalTensor) else IN_MEMORY_LIMIT
    return total


def is_large(model) -> bool:
    """Whether ``model`` (an ``onnx_ir.Model``) goes to ORT by path with external data: its
    weights reach ``IN_MEMORY_LIMIT``, or some are external already."""
    return _initializer_bytes(model) >= IN_MEMORY_LIMIT


@contextlib.contextmanager
def session_source(model_or_path) -> Iterator[str | bytes]:
    """What ``InferenceSession`` takes for a model file path or an ``onnx_ir.Model``.

    A path is used as is; a small model is serialized in memory; a model with external
    or large weights is written to a temporary folder with external data and opened by
    path, so models over 2 GB work and the weights are never copied into one protobuf.
    The model itself is left unchanged.
    """
    import onnx_ir as ir

    if isinstance(model_or_path, (str, os.PathLike)):
        yield os.fspath(model_or_path)
        return
    if not is_large(model_or_path):
        yield ir.to_proto(model_or_path).SerializeToString()
        return
    with tempfile.TemporaryDirectory(prefix="genzip-session-") as tmp:
        path = os.path.join(tmp, "model.onnx")
        # ir.save writes the external data file and leaves the in-memory model's tensors alone.
        ir.save(model_or_path, path, external_data="model.onnx.data")
        yield path


def run_model(model_or_path, feeds: dict, providers=None) -> dict:
    """Outputs by name of an ``onnx_ir.Model`` (or a model file) on ``feeds`` (CPU unless ``providers``)."""
    with session_source(model_or_path) as source:
        session = make_session(source, providers=providers)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def run_user_model(model_or_path, feeds: dict, what: str, synthesized: bool) -> dict:
    """``run_model`` on a model the user gave: ONNX Runtime's refusals are user errors.

    A model ORT cannot load, or cannot run on ``feeds``, raises a one-line
    ``GenzipError`` naming the node and op ORT named; with ``synthesized`` feeds
    (made up by genzip from the input types) the fix is to pass the real inputs.
    """
    with session_source(model_or_path) as source:
        try:
            session = make_session(source)
        except ORT_ERRORS as e:
            raise GenzipError(
                f"ONNX Runtime cannot load {what}: {ort_failure(e)}",
                "check that ONNX Runtime supports every op, domain and opset the model uses "
                "(python -m onnx.checker, onnxruntime's operator list) or re-export the model",
            ) from e
    names = [o.name for o in session.get_outputs()]
    try:
        return dict(zip(names, session.run(names, feeds)))
    except ORT_ERRORS as e:
        if synthesized:
            where, fix = ("on the example inputs genzip made up from its input types",
                          "pass the model's real inputs with --inputs FILE.npz (one array per graph input)")
        else:
            where, fix = ("on the given inputs",
                          "check the inputs' shapes, dtypes and value ranges against what the model accepts")
        raise GenzipError(f"ONNX Runtime cannot run {what} {where}: {ort_failure(e)}", fix) from e
