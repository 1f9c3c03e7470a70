"""Quantization end to end: presets' calibration inputs, genzip-compile, recipes, manifests."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest

from genzip.tools import compile_cli


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("calib-cache"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GENZIP_CACHE_DIR", path)
        yield path


def _compile(folder, *args):
    rc = compile_cli.main(["--target", "ort", "--out", str(folder), "--quiet", *args])
    assert rc == 0
    with open(os.path.join(folder, "genzip.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def pixart_w8a8(tmp_path_factory, cache_dir):
    folder = tmp_path_factory.mktemp("q") / "w8a8"
    return folder, _compile(folder, "tiny-pixart", "--passes", "annotate-precision,calibrate,quant{scheme=w8a8}")


def test_tiny_pixart_w8a8_needs_no_files(pixart_w8a8):
    folder, manifest = pixart_w8a8
    assert manifest["passes"] == "annotate-precision,calibrate,quant{scheme=w8a8}"
    qf = manifest["quant_fidelity"]
    assert qf["reference"] == "fp32-export" and "held out" in qf["inputs"]
    assert qf["cosine"] > 0.999
    stats = {p["pass"]: p["stats"] for p in manifest["pass_stats"]}
    assert stats["calibrate"]["samples"] == 8 and stats["calibrate"]["cache"] == "miss"
    assert stats["quant{scheme=w8a8}"]["quantized"] > 0
    model = onnx.load(os.path.join(folder, "model.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") == stats["quant{scheme=w8a8}"]["Q"]
    assert not any(p.key.startswith("genzip.quant") for n in model.graph.node for p in n.metadata_props)
    with open(os.path.join(folder, "report.md")) as f:
        assert "quantized vs fp32-export on held-out inputs" in f.read()


def test_recipe_expands_and_hits_the_calibration_cache(pixart_w8a8, tmp_path):
    manifest = _compile(tmp_path / "again", "tiny-pixart", "--recipe", "w8a8")
    assert manifest["passes"] == pixart_w8a8[1]["passes"]
    stats = {p["pass"]: p["stats"] for p in manifest["pass_stats"]}
    assert stats["calibrate"]["cache"] == "hit"
    assert manifest["quant_fidelity"]["cosine"] == pytest.approx(pixart_w8a8[1]["quant_fidelity"]["cosine"])


def test_tiny_llama_w4a16_weight_bytes(tmp_path, cache_dir):
    manifest = _compile(tmp_path / "w4", "tiny-llama", "--recipe", "w4a16")
    stats = {p["pass"]: p["stats"] for p in manifest["pass_stats"]}
    quant = stats["quant{scheme=w4a16}"]
    assert quant["weight_ratio"] <= 0.3
    model = onnx.load(os.path.join(tmp_path / "w4", "model.onnx"))
    total = sum(len(t.raw_data) for t in model.graph.initializer)
    assert total == quant["weight_bytes"]
    assert manifest["quant_fidelity"]["cosine"] > 0.99


def test_preset_calibration_is_a_held_out_trajectory():
    from genzip.frontend import load_model

    source = load_model("tiny-pixart", seed=0)
    samples = source.info["calibration"]()
    assert len(samples) == 8
    assert sorted({float(s["timestep"][0]) for s in samples}) == [0.0, 333.0, 666.0, 999.0]
    for s in samples:
        assert set(s) == set(source.example_inputs)
        for name, arr in s.items():
            ex = source.example_inputs[name]
            assert arr.shape == ex.shape and arr.dtype == ex.dtype
        assert not np.array_equal(s["hidden_states"], source.example_inputs["hidden_states"])
    # x_t moves along the trajectory; the caption stays fixed within one run.
    assert not np.allclose(samples[0]["hidden_states"], samples[1]["hidden_states"])
    np.testing.assert_array_equal(samples[0]["encoder_hidden_states"], samples[3]["encoder_hidden_states"])
    # Sampled once per compile: calibrate and sensitivity share the trajectory.
    assert source.info["calibration"]() is samples
    fresh = load_model("tiny-pixart", seed=0).info["calibration"]()
    np.testing.assert_array_equal(fresh[5]["hidden_states"], samples[5]["hidden_states"])


def test_tiny_pixart_w8a8_artifact_lints_clean_for_tensorrt(pixart_w8a8, capsys):
    from genzip.tools import genzip_cli

    folder, _ = pixart_w8a8
    assert genzip_cli.main(["lint", "--target", "trt", str(folder), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["findings"] == []
