"""The user's own example inputs (``--inputs``) and calibration set (``--calib-data``).

Invariant: whatever the user hands in is checked against the model's inputs (names,
dtypes, ranks, static dims) *before* the model is exported or run, and every mismatch
is a one-line :class:`GenzipError` naming the input, what was given and what is expected.

An input *spec* is ``(name, numpy dtype, shape)`` with ``None`` for a dim the model
leaves free (a symbolic ONNX dim, or the batch axis of a PyTorch source, which is
exported dynamic).

Calibration layouts, per array of an ``.npz`` (``r`` = the model input's rank):

* rank ``r + 1``: a leading samples axis, sample ``i`` is ``array[i]``;
* rank ``r``: the batch axis holds the samples, one row each (``b`` rows each when the
  model's batch axis is a static ``b``);
* anything else is refused, naming both accepted shapes.

A directory holds one ``.npz`` per sample, each array shaped like the model input.
From Python the set may also be a list (or any iterable) of feed dicts, a zero-argument
callable returning one, or ModelOpt's ``forward_loop(model)``: a one-argument callable
that calls ``model(**feeds)`` (or positionally, in input order) once per sample.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from genzip.errors import GenzipError, did_you_mean

Feeds = dict[str, np.ndarray]
Spec = tuple[str, np.dtype, tuple[int | None, ...]]


@dataclasses.dataclass(frozen=True)
class UserData:
    """What the user gave besides the model: example ``inputs`` (feeds by input name)
    and a raw calibration source (see the module docstring), both optional."""

    inputs: Feeds | None = None
    calib: Any = None


def _to_array(value: Any, where: str) -> np.ndarray:
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor, without importing torch
        value = value.detach().cpu().numpy()
    if not isinstance(value, (np.ndarray, np.generic, int, float, bool, list, tuple)):
        raise GenzipError(f"{where} is a {type(value).__name__}, not an array", "give NumPy arrays or torch tensors")
    return np.asarray(value)


def read_npz(path: str, flag: str) -> Feeds:
    """The arrays of a plain ``.npz`` (``allow_pickle=False``: object arrays are refused)."""
    if not os.path.isfile(path):
        raise GenzipError(f"{flag} file '{path}' does not exist", f"give {flag} an existing .npz file")
    fix = "save named arrays with numpy.savez(path, input_name=array, ...)"
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise GenzipError(f"{flag} file '{path}' holds a single array, not named arrays", fix)
        with data:
            arrays = {k: data[k] for k in data.files}
    except (ValueError, OSError) as e:  # not a zip, or object arrays (which would need pickle)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise GenzipError(f"{flag} file '{path}' is not a plain .npz ({first})", fix) from None
    if not arrays:
        raise GenzipError(f"{flag} file '{path}' holds no arrays", "save one array per model input with numpy.savez")
    return arrays


def read_calib_path(path: str) -> Feeds | list[Feeds]:
    """A ``.npz`` (layout resolved later against the model) or a folder of one-sample ``.npz``."""
    if os.path.isdir(path):
        files = sorted(f for f in os.listdir(path) if f.endswith(".npz"))
        if not files:
            raise GenzipError(f"--calib-data folder '{path}' has no .npz files", "put one .npz per sample in it")
        return [read_npz(os.path.join(path, f), "--calib-data") for f in files]
    return read_npz(path, "--calib-data")


def _fmt(shape: Iterable[int | None], batch: str = "?") -> str:
    return "[" + ", ".join(batch if d is None else str(d) for d in shape) + "]"


def _check_names(specs: list[Spec], given: Iterable[str], what: str) -> None:
    names = [s[0] for s in specs]
    given = list(given)
    extra = [g for g in given if g not in names]
    if extra:
        raise GenzipError(f"{what} has an array '{extra[0]}' but the model has no such input"
                          f"{did_you_mean(extra[0], names)}", f"name the arrays after the model's inputs: {', '.join(names)}")
    missing = [n for n in names if n not in given]
    if missing:
        raise GenzipError(f"{what} lacks the model input '{missing[0]}'",
                          f"give one array per model input: {', '.join(names)}")


def _check_dtype(spec: Spec, arr: np.ndarray, what: str) -> None:
    name, dtype, _ = spec
    if arr.dtype != dtype:
        raise GenzipError(f"{what} input '{name}' is {arr.dtype}, the model takes {dtype}",
                          f"cast it, e.g. array.astype(numpy.{dtype})")


def _fits(shape: tuple[int | None, ...], arr_shape: tuple[int, ...]) -> bool:
    return len(shape) == len(arr_shape) and all(d is None or d == s for d, s in zip(shape, arr_shape))


def check_inputs(specs: list[Spec], feeds: Mapping[str, Any], what: str = "--inputs") -> Feeds:
    """Example inputs: exactly the model's input names, their dtypes, ranks and static dims."""
    feeds = {k: _to_array(v, f"{what} input '{k}'") for k, v in feeds.items()}
    _check_names(specs, feeds, what)
    for spec in specs:
        name, _, shape = spec
        arr = feeds[name]
        _check_dtype(spec, arr, what)
        if not _fits(shape, arr.shape):
            raise GenzipError(f"{what} input '{name}' has shape {list(arr.shape)}, the model takes {_fmt(shape)}",
                              "give an array of that shape (? = any size)")
    return {s[0]: feeds[s[0]] for s in specs}


def _split(spec: Spec, arr: np.ndarray) -> list[np.ndarray]:
    """One calibration array in either layout -> its samples (see the module docstring)."""
    name, _, shape = spec
    if _fits((None, *shape), arr.shape):
        return [arr[i] for i in range(arr.shape[0])]
    if len(shape) >= 1 and _fits((None, *shape[1:]), arr.shape):
        rows = shape[0] or 1
        if arr.shape[0] % rows:
            raise GenzipError(f"--calib-data input '{name}' has {arr.shape[0]} rows on the batch axis, "
                              f"not a multiple of the model's static batch {rows}",
                              f"give a multiple of {rows} rows, or samples on a new leading axis")
        return [arr[i : i + rows] for i in range(0, arr.shape[0], rows)]
    rest = _fmt(shape[1:])[1:-1]
    batch_form = f"[N, {rest}]" if rest else "[N]"
    raise GenzipError(
        f"--calib-data input '{name}' has shape {list(arr.shape)}, which fits neither layout for the model's "
        f"input {_fmt(shape)}",
        f"give [N, {_fmt(shape)[1:-1]}] (samples first) or {batch_form} (samples on the batch axis)",
    )


def _samples_from_arrays(specs: list[Spec], arrays: Feeds) -> list[Feeds]:
    _check_names(specs, arrays, "--calib-data")
    split = {}
    for spec in specs:
        arr = _to_array(arrays[spec[0]], f"--calib-data input '{spec[0]}'")
        _check_dtype(spec, arr, "--calib-data")
        split[spec[0]] = _split(spec, arr)
    counts = {n: len(v) for n, v in split.items()}
    if len(set(counts.values())) > 1:
        raise GenzipError(f"--calib-data arrays hold different sample counts {counts}",
                          "give every input the same number of samples")
    n = next(iter(counts.values()))
    if n == 0:
        raise GenzipError("--calib-data holds no samples", "give at least one sample")
    return [{name: split[name][i] for name in split} for i in range(n)]


class _Recorder:
    """The ``model`` a ModelOpt-style ``forward_loop(model)`` is handed: each call is a sample."""

    def __init__(self, names: list[str]):
        self.names, self.samples = names, []

    def __call__(self, *args, **kwargs):
        if len(args) > len(self.names):
            raise GenzipError(f"forward_loop called the model with {len(args)} positional inputs, but it takes "
                              f"{len(self.names)}", f"call model(**feeds) with {', '.join(self.names)}")
        self.samples.append({**dict(zip(self.names, args)), **kwargs})


def _python_samples(source: Any, names: list[str]) -> list[Any]:
    if callable(source) and not isinstance(source, Mapping):
        try:
            params = [p for p in inspect.signature(source).parameters.values()
                      if p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        except (TypeError, ValueError):
            params = []
        if len(params) == 1:
            recorder = _Recorder(names)
            source(recorder)
            return recorder.samples
        if params:
            raise GenzipError(f"the calibration callable takes {len(params)} arguments",
                              "give a function of no arguments yielding feed dicts, or forward_loop(model)")
        source = source()
    if isinstance(source, (str, bytes)) or not isinstance(source, Iterable):
        raise GenzipError(f"calibration data of type {type(source).__name__} is not a set of samples",
                          "give a .npz path, a folder, a list of feed dicts or a callable yielding them")
    return list(source)


def calibration_samples(specs: list[Spec], source: Any) -> list[Feeds]:
    """Normalize any accepted calibration source (module docstring) to checked feed dicts."""
    if isinstance(source, (str, os.PathLike)):
        source = read_calib_path(os.fspath(source))
    if isinstance(source, Mapping):  # one .npz: arrays in either layout
        return _samples_from_arrays(specs, dict(source))
    samples = _python_samples(source, [s[0] for s in specs])
    if not samples:
        raise GenzipError("--calib-data holds no samples", "give at least one sample")
    out = []
    for i, sample in enumerate(samples):
        if not isinstance(sample, Mapping):
            raise GenzipError(f"calibration sample {i} is a {type(sample).__name__}, not a dict of input arrays",
                              "yield dicts mapping input names to arrays")
        out.append(check_inputs(specs, sample, f"calibration sample {i}"))
    return out


def specs_of_graph(graph) -> list[Spec]:
    """Specs of an ``onnx_ir`` graph's feed inputs (symbolic dims free)."""
    from genzip.frontend.onnx_inputs import graph_feed_inputs

    specs = []
    for value in graph_feed_inputs(graph):
        if value.dtype is None or value.shape is None:
            raise GenzipError(f"ONNX input '{value.name}' has no declared shape or type",
                              "add shapes/types to the graph inputs (e.g. with onnx.shape_inference) and retry")
        try:
            dtype = np.dtype(value.dtype.numpy())
        except TypeError:
            dtype = np.dtype(object)
        specs.append((value.name, dtype, tuple(d if isinstance(d, int) else None for d in value.shape)))
    return specs
