"""ORT runs an artifact's stored ORT-optimized graph (genzip's ORT fusions included) when this ORT wrote it."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np

from genzip.backends.ort_backend import artifact_model_path
from genzip.backends.runner import load_artifact


def _copy(pixart_ort, tmp_path, edit=None) -> str:
    folder, _ = pixart_ort
    dst = str(tmp_path / "copy")
    shutil.copytree(folder, dst)
    if edit is not None:
        path = os.path.join(dst, "genzip.json")
        with open(path) as f:
            manifest = json.load(f)
        edit(manifest)
        with open(path, "w") as f:
            json.dump(manifest, f)
    return dst


def test_the_optimized_graph_runs_and_matches_the_portable_model(pixart_ort, tmp_path):
    folder, manifest = pixart_ort
    assert manifest["ort"]["optimized_model"] == "model.ort.onnx"
    model = load_artifact(folder, prefer="onnxruntime")
    assert model.model_path == os.path.join(folder, "model.ort.onnx")
    feeds = model.example_inputs()
    stale = load_artifact(_copy(pixart_ort, tmp_path, lambda m: m["versions"].update(onnxruntime="0.0.1")),
                          prefer="onnxruntime")
    assert stale.model_path.endswith(os.sep + "model.onnx")
    out, ref = model.run(feeds), stale.run(feeds)
    for name in out:
        np.testing.assert_allclose(out[name], ref[name], rtol=1e-4, atol=1e-5)


def test_fallbacks_say_why(pixart_ort, tmp_path):
    folder, manifest = pixart_ort
    path, why = artifact_model_path(folder, {**manifest, "versions": {"onnxruntime": "0.0.1"}})
    assert path.endswith("model.onnx") and "0.0.1" in why
    path, why = artifact_model_path(folder, {k: v for k, v in manifest.items() if k != "ort"})
    assert path.endswith("model.onnx") and "no ORT-optimized" in why
    missing = _copy(pixart_ort, tmp_path)
    os.remove(os.path.join(missing, "model.ort.onnx"))
    path, why = artifact_model_path(missing, manifest)
    assert path == os.path.join(missing, "model.onnx") and "missing" in why


def test_an_optimized_graph_that_disagrees_is_dropped(pixart_ort, tmp_path):
    from genzip.backends.ort_backend import write_checked_optimized

    folder = _copy(pixart_ort, tmp_path)
    model = load_artifact(folder, prefer="onnxruntime")
    feeds = model.example_inputs()
    expected = {name: out + 1.0 for name, out in model.run(feeds).items()}
    names, section = write_checked_optimized(folder, "model.onnx", feeds, expected)
    assert names == [] and section["optimized_model"] is None and "disagrees" in section["skipped"]
    assert not os.path.exists(os.path.join(folder, "model.ort.onnx"))
    names, section = write_checked_optimized(folder, "model.onnx", feeds, model.run(feeds))
    assert names == ["model.ort.onnx"] and section["optimized_model"] == "model.ort.onnx"
