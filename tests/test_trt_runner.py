"""genzip.load (via backends.runner.load_artifact) picks TensorRT only when the engine can run here, else ONNX Runtime, and says which."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil

import numpy as np
import pytest

from genzip.backends import trt_backend, trt_runner
from genzip.backends.runner import load_artifact


def _trt_copy(src: str, dst: str, engine: bool = True) -> str:
    """A copy of an ORT artifact whose manifest says it carries a TensorRT engine."""
    shutil.copytree(src, dst)
    path = os.path.join(dst, "genzip.json")
    with open(path) as f:
        manifest = json.load(f)
    manifest["target"] = "trt"
    manifest["trt"] = {"engine": "model.engine", "plugins": []}
    with open(path, "w") as f:
        json.dump(manifest, f)
    if engine:
        with open(os.path.join(dst, "model.engine"), "wb") as f:
            f.write(b"not a real engine")
    return dst


def test_ort_artifact_runs_on_onnxruntime_and_says_why(pixart_ort, caplog):
    folder, _ = pixart_ort
    with caplog.at_level(logging.INFO, logger="genzip.backends.runner"):
        model = load_artifact(folder)
    assert model.backend == "onnxruntime"
    assert "no TensorRT engine" in model.backend_reason
    assert any("runs on onnxruntime" in r.getMessage() for r in caplog.records)


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed here")
def test_engine_without_tensorrt_falls_back_to_ort(pixart_ort, tmp_path):
    folder = _trt_copy(pixart_ort[0], str(tmp_path / "trt"))
    model = load_artifact(folder)
    assert model.backend == "onnxruntime"
    assert "pip install genzip[trt]" in model.backend_reason
    feeds = model.example_inputs()
    out = model.run(feeds)
    assert all(np.isfinite(v).all() for v in out.values())


def test_missing_engine_file_is_named(pixart_ort, tmp_path):
    folder = _trt_copy(pixart_ort[0], str(tmp_path / "trt"), engine=False)
    backend, reason = trt_runner.choose_backend(folder, json.load(open(os.path.join(folder, "genzip.json"))))
    assert backend == "onnxruntime" and "model.engine is missing" in reason


def test_engine_chosen_when_tensorrt_and_cuda_are_present(pixart_ort, tmp_path, monkeypatch):
    folder = _trt_copy(pixart_ort[0], str(tmp_path / "trt"))
    manifest = json.load(open(os.path.join(folder, "genzip.json")))
    monkeypatch.setattr(trt_backend, "tensorrt_available", lambda: True)
    monkeypatch.setattr(trt_runner, "_cuda_device", lambda: False)
    assert trt_runner.choose_backend(folder, manifest)[1] == "no CUDA device is visible to torch"
    monkeypatch.setattr(trt_runner, "_cuda_device", lambda: True)
    assert trt_runner.choose_backend(folder, manifest)[0] == "tensorrt"
    # Asking for ORT overrides the engine even where it could run.
    assert load_artifact(folder, prefer="onnxruntime").backend == "onnxruntime"


def test_run_cli_prints_backend_and_reason(pixart_ort, capsys):
    from genzip.tools import genzip_cli

    assert genzip_cli.main(["run", pixart_ort[0], "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["backend"] == "onnxruntime" and "no TensorRT engine" in out["backend_reason"]


@pytest.mark.trt
@pytest.mark.gpu
def test_trt_engine_matches_ort(pixart_ort, tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT not installed here: the registry's wheels need an NVIDIA driver")
    if not trt_backend.gpu_available():
        pytest.skip("TensorRT cannot open a GPU on this machine")
    from genzip.tools import compile_cli

    out = str(tmp_path / "trt")
    assert compile_cli.main(["tiny-pixart", "--target", "trt", "--precision", "fp32", "--out", out, "--quiet"]) == 0
    trt_model = load_artifact(out)
    assert trt_model.backend == "tensorrt"
    ort_model = load_artifact(out, prefer="onnxruntime")
    feeds = ort_model.example_inputs()
    ref, got = ort_model.run(feeds), trt_model.run(feeds)
    for name in ref:
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-3, atol=1e-3)
