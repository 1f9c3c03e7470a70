"""Where ``calibrate`` gets its inputs, how they are checked, hashed and cached.

Calibration data flow (first match wins):

1. ``calibrate{data=FILE.npz}``: one array per graph input, samples stacked on a
   new leading axis (``name -> [N, *input_shape]``), read with ``allow_pickle=False``;
   or ``data=package.module:function``, a generator function returning feed dicts;
2. the pass context's ``calibration`` (``PassContext``): the compile driver puts
   ``SourceModel.info["calibration"]`` there (presets attach a seeded generator, see
   ``genzip.frontend.calibration``); a library caller builds its own context;
3. otherwise ``GenzipError`` telling the user to pass ``data=``. Passes declare the
   need (``needs``), so the driver reports it before loading the model.

A source is a list of feed dicts or a zero-argument callable returning one (so a
preset's trajectory is only sampled when a pipeline calibrates). Scales are cached
as JSON (never pickle) under ``cache=DIR`` (default ``$GENZIP_CACHE_DIR`` or
``~/.cache/genzip``)/``calibration/<model-hash>-<data-hash>-<method>.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import numpy as np
import onnx_ir as ir

from genzip import jsonfile
from genzip.errors import GenzipError
from genzip.passes.infra.context import Feeds, PassContext


def load_npz(path: str) -> list[Feeds]:
    if not os.path.isfile(path):
        raise GenzipError(f"calibration file '{path}' does not exist", "give calibrate{data=FILE.npz} an existing file")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except ValueError as e:
        raise GenzipError(f"calibration file '{path}' is not a plain .npz ({e})", "save arrays with numpy.savez") from None
    counts = {a.shape[0] if a.ndim else 0 for a in arrays.values()}
    if len(counts) > 1:
        raise GenzipError(
            f"calibration file '{path}' has arrays with different sample counts {sorted(counts)}",
            "stack the same number of samples on axis 0 of every input",
        )
    n = counts.pop() if counts else 0
    return [{k: a[i] for k, a in arrays.items()} for i in range(n)]


def load_function(ref: str) -> list[Feeds]:
    """``package.module:function`` returning a list of feed dicts (a generator function)."""
    import importlib

    module, _, name = ref.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise GenzipError(f"cannot load calibration function '{ref}' ({e})", "give package.module:function") from None
    return list(fn())


def resolve(data: str | None, context: PassContext, pass_name: str) -> list[Feeds]:
    """The pass's ``data=`` option when given, else the context's calibration set."""
    if data:
        return load_function(data) if ":" in data and not os.path.exists(data) else load_npz(data)
    return context.calibration_samples(pass_name)


def check_feeds(model: ir.Model, samples: list[Feeds]) -> None:
    """Every sample names exactly the graph inputs, with their rank, static dims and dtype."""
    if not samples:
        raise GenzipError("the calibration set is empty", "give at least one sample (samples on axis 0 of the .npz)")
    inputs = {v.name: v for v in model.graph.inputs if v.name not in model.graph.initializers}
    for i, feeds in enumerate(samples):
        missing, extra = sorted(set(inputs) - set(feeds)), sorted(set(feeds) - set(inputs))
        if missing or extra:
            raise GenzipError(
                f"calibration sample {i} has inputs {sorted(feeds)} but the model takes {sorted(inputs)}",
                "name the .npz arrays after the model's graph inputs",
            )
        for name, value in inputs.items():
            arr = feeds[name]
            shape = value.shape
            dims = list(shape) if shape is not None else None
            bad = dims is not None and (
                len(dims) != arr.ndim or any(isinstance(d, int) and d != s for d, s in zip(dims, arr.shape))
            )
            if bad:
                raise GenzipError(
                    f"calibration sample {i} input '{name}' has shape {list(arr.shape)}, the model expects {shape}",
                    "give one sample per entry on axis 0, each shaped like the model input",
                )
            if value.dtype is not None and arr.dtype != value.dtype.numpy():
                raise GenzipError(
                    f"calibration sample {i} input '{name}' is {arr.dtype}, the model expects {value.dtype.numpy()}",
                    "cast the calibration arrays to the input dtype",
                )


def data_hash(samples: list[Feeds]) -> str:
    h = hashlib.sha256()
    for feeds in samples:
        for name in sorted(feeds):
            arr = np.ascontiguousarray(feeds[name])
            h.update(f"{name}|{arr.dtype.str}|{arr.shape}".encode())
            h.update(arr.tobytes())
    return h.hexdigest()


def probe_session(model: ir.Model, tensors: list[str]):
    """An ORT session of ``model`` that also outputs ``tensors`` (value names; graph inputs and
    outputs among them are skipped: they are in the feeds or outputs already).

    The probed tensors are graph outputs only while the session is created, and the session
    opens the model by path with external data when it is large (``genzip.ort_session``), so
    a model over 2 GB is never serialized into one protobuf. ``model`` is left as it came.
    """
    from genzip.ort_session import make_session, session_source

    graph = model.graph
    by_name = {v.name: v for node in graph for v in node.outputs}
    by_name.update(graph.initializers)
    present = {v.name for v in graph.inputs} | {v.name for v in graph.outputs}
    extra = [by_name[t] for t in dict.fromkeys(tensors) if t not in present]
    graph.outputs.extend(extra)
    try:
        with session_source(model) as source:
            return make_session(source)
    finally:
        for value in extra:
            graph.outputs.remove(value)


def model_hash(model: ir.Model) -> str:
    """sha256 of the graph's text and every initializer's bytes, one tensor at a time
    (a model over 2 GB is never serialized whole)."""
    digest = hashlib.sha256(str(model.graph).encode())
    for name in sorted(model.graph.initializers):
        tensor = model.graph.initializers[name].const_value
        digest.update(name.encode())
        if tensor is not None:
            digest.update(f"{tensor.dtype}{list(tensor.shape)}".encode())
            digest.update(tensor.tobytes())
    return digest.hexdigest()


def cache_path(cache_dir: str | None, mhash: str, dhash: str, method: str) -> str:
    return os.path.join(jsonfile.cache_root(cache_dir), "calibration", f"{mhash[:24]}-{dhash[:24]}-{method}.json")


def read_cache(path: str, mhash: str, dhash: str) -> dict[str, Any] | None:
    return jsonfile.read_cache(path, {"model": mhash, "data": dhash})


def write_cache(path: str, body: dict[str, Any]) -> None:
    """Atomic write, so two compiles racing on one key never read half a file."""
    jsonfile.write_atomic(path, lambda f: json.dump(body, f, indent=1, sort_keys=True), prefix=".calib-")
