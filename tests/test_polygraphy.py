"""Polygraphy on artifacts: inspect, run on ORT with the artifact's own inputs, and the printed commands."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import numpy as np
import onnx.parser
import pytest

from genzip.errors import GenzipError
from genzip.tools import genzip_cli, polygraphy_loader

POLYGRAPHY = os.path.join(os.path.dirname(sys.executable), "polygraphy")
LOADER = f"{polygraphy_loader.__file__}:load_data"


def _tiny_artifact(folder) -> str:
    """An artifact folder around a one-Attention model (no frontend needed)."""
    proto = onnx.parser.parse_model('<ir_version: 10, opset_import: ["" : 23]>\n'
                                    "g (float[2,4,8,16] q, float[2,4,8,16] kv) => (float[2,4,8,16] y) {"
                                    " y = Attention <scale: float = 0.25> (q, kv, kv) }")
    os.makedirs(folder)
    onnx.save(proto, os.path.join(folder, "model.onnx"))
    inputs = [{"name": n, "shape": [2, 4, 8, 16], "dtype": "float32"} for n in ("q", "kv")]
    with open(os.path.join(folder, "genzip.json"), "w") as f:
        json.dump({"model": "model.onnx", "files": {}, "inputs": inputs, "outputs": [], "source": "tiny",
                   "target": "onnx", "passes": "", "pass_stats": [],
                   "fidelity": {"cosine": 1.0, "max_abs_err": 0.0, "reference": "none"}}, f)
    rng = np.random.default_rng(7)
    np.savez(os.path.join(folder, "inputs.npz"), **{s["name"]: rng.standard_normal(s["shape"]).astype(np.float32)
                                                    for s in inputs})
    return str(folder)


@pytest.fixture(params=["tiny", "pixart"])
def artifact(request, tmp_path):
    if request.param == "tiny":
        return _tiny_artifact(tmp_path / "tiny")
    import genzip.frontend

    if not hasattr(genzip.frontend, "load_model"):
        pytest.skip("genzip.frontend.load_model has not landed yet, so tiny-pixart cannot be compiled")
    return request.getfixturevalue("pixart_ort")[0]


def polygraphy(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([POLYGRAPHY, *argv], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_polygraphy_inspect_model(artifact):
    result = polygraphy("inspect", "model", os.path.join(artifact, "model.onnx"), "--show", "layers")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Attention" in result.stdout + result.stderr


def test_polygraphy_run_feeds_the_artifact_inputs(artifact, tmp_path):
    saved = tmp_path / "fed.json"
    result = polygraphy("run", os.path.join(artifact, "model.onnx"), "--onnxrt",
                        "--data-loader-script", LOADER, "--save-inputs", str(saved))
    assert result.returncode == 0, result.stdout + result.stderr
    from polygraphy.json import load_json

    (fed,) = load_json(str(saved))
    with np.load(os.path.join(artifact, "inputs.npz")) as data:
        assert set(fed) == set(data.files)
        for name in data.files:
            np.testing.assert_array_equal(fed[name], data[name])


def test_loader_finds_inputs_by_env_var_or_command_line(tmp_path):
    folder = _tiny_artifact(tmp_path / "a")
    npz = os.path.join(folder, "inputs.npz")
    assert polygraphy_loader.locate_inputs([], {"GENZIP_ARTIFACT": folder}) == npz
    assert polygraphy_loader.locate_inputs([], {"GENZIP_ARTIFACT": npz}) == npz
    argv = ["polygraphy", "run", os.path.join(folder, "model.onnx"), "--onnxrt"]
    assert polygraphy_loader.locate_inputs(argv, {}) == npz
    with pytest.raises(GenzipError, match="GENZIP_ARTIFACT"):
        polygraphy_loader.locate_inputs(["polygraphy", "run", "--onnxrt"], {})
    with pytest.raises(GenzipError, match="no inputs.npz"):
        polygraphy_loader.locate_inputs([], {"GENZIP_ARTIFACT": str(tmp_path)})


def test_inspect_polygraphy_prints_runnable_commands(artifact, capsys, tmp_path):
    rc = genzip_cli.main(["inspect", "--polygraphy", artifact])
    out = capsys.readouterr().out
    assert rc == 0
    model = os.path.join(artifact, "model.onnx")
    commands = [line for line in out.splitlines() if not line.startswith("#")]
    assert any(c.startswith("polygraphy inspect model") and model in c for c in commands)
    run_ort = next(c for c in commands if "--onnxrt" in c and "--trt" not in c)
    trt = next(c for c in commands if "--trt --onnxrt" in c)
    if os.path.isfile(os.path.join(artifact, "inputs.json")):  # compiled artifacts ship Polygraphy's JSON
        assert f"--load-inputs {os.path.join(artifact, 'inputs.json')}" in run_ort
    else:  # a folder without it falls back to the loader script over inputs.npz
        assert "--data-loader-script" in run_ort and "polygraphy_loader.py:load_data" in run_ort
    # TRT vs ORT is judged by the artifact's own cosine gate, not atol/rtol.
    gate = json.load(open(os.path.join(artifact, "genzip.json")))["fidelity"].get("min_cosine", 0.99)
    assert f"--compare-func cosine_similarity --cosine-similarity-threshold {gate}" in trt
    assert "--atol" not in trt and "genzip lint --target trt" in out
    # The comparison works as printed, with ORT standing in for TensorRT (no GPU here):
    # the same feed and compare flags, two runners, the check passes.
    argv = shlex.split(trt.replace("--trt --onnxrt", "--onnxrt --onnxrt"))
    result = subprocess.run([POLYGRAPHY, *argv[argv.index("run"):]], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Cosine Similarity" in result.stdout + result.stderr


def test_artifact_ships_polygraphy_inputs(pixart_ort):
    """inputs.json holds inputs.npz's arrays in Polygraphy's --load-inputs format, and the manifest hashes it."""
    from polygraphy.json import load_json

    folder = pixart_ort[0]
    (feeds,) = load_json(os.path.join(folder, "inputs.json"))
    with np.load(os.path.join(folder, "inputs.npz")) as data:
        assert set(feeds) == set(data.files)
        for name in data.files:
            np.testing.assert_array_equal(feeds[name], data[name])
    manifest = json.load(open(os.path.join(folder, "genzip.json")))
    assert "inputs.json" in manifest["files"] and manifest["fidelity"]["min_cosine"] == 0.99
