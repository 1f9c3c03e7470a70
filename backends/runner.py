"""Run a compiled artifact: input checking against the manifest, synthetic inputs, ORT sessions."""

from __future__ import annotations

import logging
import os
import zipfile
from typing import Any

import numpy as np

from genzip.backends.artifact import read_manifest
from genzip.backends.ort_backend import artifact_model_path
from genzip.errors import GenzipError
from genzip.ort_session import make_session
from genzip.providers import describe, resolve_providers

logger = logging.getLogger(__name__)

EXAMPLE_INPUTS = "inputs.npz"


def np_dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def load_npz(path: str) -> dict[str, np.ndarray]:
    """Read an .npz of plain arrays. Object arrays are refused: they would need pickle."""
    if not os.path.isfile(path):
        raise GenzipError(f"input file {path} does not exist", "pass an .npz written with numpy.savez")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise GenzipError(f"{path} is not a readable .npz of arrays ({e})", "write it with numpy.savez") from None


def dim_ranges(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The ranges of the dims the export kept dynamic (``--dynamic-axes``): dim name ->
    ``{"min", "opt", "max", "multiple", ...}``; empty for an artifact with static sizes."""
    return manifest.get("source_info", {}).get("dynamic_sizes") or {}


def traced_shape(shape: list[Any], manifest: dict[str, Any]) -> list[Any]:
    """``shape`` with each dim kept dynamic by ``--dynamic-axes`` replaced by its traced (opt)
    size: what code that builds inputs of "the artifact's size" uses (the batch stays a name)."""
    ranges = dim_ranges(manifest)
    return [ranges[d]["opt"] if isinstance(d, str) and d in ranges else d for d in shape]


def _check_range(name: str, shape, axis: int, dim: str, got: int, r: dict[str, Any]) -> None:
    multiple = r.get("multiple", 1)
    if r["min"] <= got <= r["max"] and got % multiple == 0:
        return
    sizes = f"{r['min']}..{r['max']}" + (f" in multiples of {multiple}" if multiple > 1 else "")
    raise GenzipError(f"input '{name}' has {dim} {got} (axis {axis} of {list(shape)}), and this artifact takes "
                      f"{dim} {sizes}", f"pass a {dim} in {sizes}, or recompile with a --dynamic-axes range that "
                      f"includes {got}")


def check_inputs(feeds: dict[str, np.ndarray], specs: list[dict[str, Any]],
                 ranges: dict[str, dict[str, Any]] | None = None) -> None:
    """Raise one GenzipError naming the first input whose name, rank, dims or dtype mismatch;
    a dynamic dim with a range in ``ranges`` (:func:`dim_ranges`) must lie in it."""
    names = [s["name"] for s in specs]
    missing = [n for n in names if n not in feeds]
    if missing:
        raise GenzipError(f"missing input '{missing[0]}'", f"the model takes {', '.join(names)}")
    extra = [n for n in feeds if n not in names]
    if extra:
        raise GenzipError(f"unknown input '{extra[0]}'", f"the model takes {', '.join(names)}")
    bound: dict[str, int] = {}
    for spec in specs:
        arr = feeds[spec["name"]]
        want = np_dtype(spec["dtype"])
        if arr.dtype != want:
            raise GenzipError(f"input '{spec['name']}' has dtype {arr.dtype}, expected {want}", f"cast it to {want}")
        shape = spec["shape"]
        if shape is None:
            continue
        if arr.ndim != len(shape):
            raise GenzipError(
                f"input '{spec['name']}' has shape {list(arr.shape)}, expected rank {len(shape)} {shape}",
                "reshape it to the manifest's shape",
            )
        for axis, (got, dim) in enumerate(zip(arr.shape, shape)):
            if isinstance(dim, int) and got != dim:
                raise GenzipError(
                    f"input '{spec['name']}' has shape {list(arr.shape)}, expected {shape} (axis {axis})",
                    "reshape it to the manifest's shape",
                )
            if isinstance(dim, str) and dim in (ranges or {}):
                _check_range(spec["name"], arr.shape, axis, dim, got, ranges[dim])
            if isinstance(dim, str) and bound.setdefault(dim, got) != got:
                raise GenzipError(
                    f"input '{spec['name']}' sets {dim}={got} but an earlier input set {dim}={bound[dim]}",
                    "make the shared dimensions agree",
                )


def synthetic_inputs(specs: list[dict[str, Any]], seed: int = 0, dims: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    dims = dims or {}
    feeds = {}
    for spec in specs:
        shape = [d if isinstance(d, int) else dims.get(d, 1) for d in (spec["shape"] or [])]
        dtype = np_dtype(spec["dtype"])
        if np.issubdtype(dtype, np.integer):
            feeds[spec["name"]] = rng.integers(0, 16, size=shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[spec["name"]] = np.ones(shape, dtype=bool)
        else:
            feeds[spec["name"]] = rng.standard_normal(shape).astype(dtype)
    return feeds


class CompiledModel:
    """An artifact opened for inference. ``model(**feeds)`` or ``model.run(feeds)`` -> dict of outputs.

    ``backend`` is ``"tensorrt"`` when the artifact's engine can run here (see
    ``trt_runner.choose_backend``), else ``"onnxruntime"``; ``backend_reason`` says why.
    ``prefer="onnxruntime"`` skips the engine, and so do ``providers`` (ONNX Runtime
    execution providers, ``genzip.providers`` syntax; default CPU).
    """

    def __init__(self, folder: str, threads: int | None = None, prefer: str = "auto", providers=None):
        from genzip.backends.trt_runner import choose_backend

        self.folder = folder
        self.manifest = read_manifest(folder)
        self.backend, self.backend_reason = choose_backend(folder, self.manifest)
        # Checked before anything opens, so a provider this ORT lacks fails in one line.
        self.providers = resolve_providers(providers) if providers is not None else None
        if prefer == "onnxruntime" and self.backend != "onnxruntime":
            self.backend, self.backend_reason = "onnxruntime", "ONNX Runtime was asked for"
        elif self.providers is not None and self.backend != "onnxruntime":
            self.backend, self.backend_reason = "onnxruntime", "ONNX Runtime providers were asked for"
        logger.info("genzip: %s runs on %s: %s", folder, self.backend, self.backend_reason)
        self._trt = None
        self.model_path: str | None = None
        if self.backend == "tensorrt":
            from genzip.backends.trt_runner import TrtModel

            self._trt = TrtModel(folder, self.manifest)
            self.output_names = list(self._trt.output_names)
            return
        if not os.path.isfile(os.path.join(folder, self.manifest["model"])):
            raise GenzipError(f"{folder} lacks its model file {self.manifest['model']}", "recompile the artifact")
        self.model_path, why = artifact_model_path(folder, self.manifest, self.providers)
        logger.info("genzip: ONNX Runtime runs %s on %s", why, ", ".join(describe(self.providers)))
        self.session = make_session(self.model_path, threads=threads, providers=self.providers)
        self.output_names = [o.name for o in self.session.get_outputs()]

    @property
    def inputs(self) -> list[dict[str, Any]]:
        return self.manifest["inputs"]

    def example_inputs(self) -> dict[str, np.ndarray]:
        path = os.path.join(self.folder, EXAMPLE_INPUTS)
        if os.path.isfile(path):
            return load_npz(path)
        return synthetic_inputs(self.inputs)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_inputs(feeds, self.inputs, dim_ranges(self.manifest))
        if self._trt is not None:
            return self._trt.run(feeds)
        outs = self.session.run(self.output_names, feeds)
        return dict(zip(self.output_names, outs))

    def __call__(self, **feeds: np.ndarray) -> dict[str, np.ndarray]:
        return self.run(feeds)


def load_artifact(folder: str, threads: int | None = None, prefer: str = "auto", providers=None) -> CompiledModel:
    return CompiledModel(folder, threads=threads, prefer=prefer, providers=providers)
