"""``genzip-compile --config FILE`` and ``genzip.compile(config=...)``: TOML/YAML/JSON files,
parameterized recipes, flags over the file, one-line validation, and the round trip
through an artifact's manifest (``--config ARTIFACT/genzip.json`` rebuilds the same files)."""

from __future__ import annotations

import json
import os
import textwrap

import numpy as np
import pytest
from test_user_inputs import _compile, _feeds, _onnx_file, _refused

import genzip
from genzip.errors import GenzipError
from genzip.recipes import expand_recipe


def _manifest(folder) -> dict:
    with open(os.path.join(folder, "genzip.json")) as f:
        return json.load(f)


@pytest.fixture
def project(tmp_path):
    """A model, example inputs and a calibration folder, named by a TOML file with relative paths."""
    _onnx_file(tmp_path / "m.onnx")
    np.savez(tmp_path / "in.npz", **_feeds(3))
    (tmp_path / "calib").mkdir()
    for s in range(3):
        np.savez(tmp_path / "calib" / f"{s}.npz", **_feeds(2, seed=10 + s))
    (tmp_path / "genzip.toml").write_text(textwrap.dedent('''
        model = "m.onnx"
        target = "ort"
        inputs = "in.npz"
        calib-data = "calib"
        min_cosine = 0.95
        recipe = {name = "w8a8", method = "percentile", "calibrate.percentile" = 99.9}
    '''))
    return tmp_path


def test_recipe_parameters_map_onto_their_passes_options():
    assert expand_recipe("share-w8a8", params={"window": 0.0625}).endswith("share-attn{window=0.0625}")
    assert expand_recipe("share-w8a8{window=0.0625}") == expand_recipe("share-w8a8", params={"window": 0.0625})
    assert expand_recipe("w8a8", params={"scheme": "fp8"}) == \
        "annotate-precision{scheme=fp8},calibrate,quant{scheme=fp8}"  # every pass with that option
    assert expand_recipe("w8a8", params={"quant.merge": True}) == "annotate-precision,calibrate,quant{scheme=w8a8 merge=true}"
    with pytest.raises(GenzipError, match=r"recipe 'share-w8a8' has no parameter 'windw' \(did you mean: window"):
        expand_recipe("share-w8a8", params={"windw": 0.1})


def test_genzip_recipes_lists_the_parameters(capsys):
    from genzip.tools import genzip_cli

    assert genzip_cli.main(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    window = lines[lines.index(next(x for x in lines if x.startswith("window "))) + 2]
    assert window.split("parameters: ")[1].split() == ["chunk", "layers", "residual", "tokens", "window"]


def test_a_toml_config_compiles_with_flags_over_it_and_rebuilds_from_the_manifest(project, capsys):
    out = project / "a"
    rc, err = _compile(["--config", str(project / "genzip.toml"), "--target", "onnx", "--out", str(out)], capsys)
    assert rc == 0, err
    manifest = _manifest(out)
    assert manifest["target"] == "onnx"  # the flag beat the file's "ort"
    assert manifest["passes"] == "annotate-precision,calibrate{method=percentile percentile=99.9},quant{scheme=w8a8}"
    config = manifest["config"]
    assert config["model"] == str(project / "m.onnx") and config["calib_data"] == str(project / "calib")
    assert config["inputs"] == "inputs.npz" and config["min_cosine"] == 0.95 and config["seed"] == 0
    calibrate = next(r for r in manifest["pass_stats"] if r["pass"].startswith("calibrate"))
    assert calibrate["stats"]["samples"] == 3
    again = project / "b"
    rc, err = _compile(["--config", str(out / "genzip.json"), "--out", str(again)], capsys)
    assert rc == 0, err
    rebuilt = _manifest(again)
    assert rebuilt["files"] == manifest["files"] and rebuilt["config"] == config
    art = genzip.compile(config=str(out), out=str(project / "c"), target="ort")  # an artifact folder works too
    assert art.manifest["target"] == "ort" and art.manifest["files"]["model.onnx"] == manifest["files"]["model.onnx"]


def test_yaml_and_json_configs(project):
    (project / "c.yaml").write_text("model: m.onnx\ntarget: onnx\nrecipe: {name: w8a8}\ncalib_data: calib\n")
    art = genzip.compile(config=str(project / "c.yaml"))
    assert art.temporary and art.manifest["passes"].startswith("annotate-precision,calibrate")
    (project / "c.json").write_text(json.dumps({"model": "m.onnx", "target": "onnx", "passes": "dce"}))
    with genzip.compile(config=str(project / "c.json"), passes="cse") as art:
        assert art.manifest["passes"] == "cse"  # the keyword beat the file


@pytest.mark.parametrize("text, message", [
    ('model = "m.onnx"\nrecipy = "w8a8"\n', r"unknown key 'recipy' \(did you mean: recipe, "),
    ('model = "m.onnx"\nseed = "zero"\n', r"key 'seed' is 'zero' \(str\), expected an integer"),
    ('model = "m.onnx"\ntarget = "tensorrt"\n', r"key 'target' is 'tensorrt' \(str\), expected one of 'onnx', 'ort', 'trt'"),
    ('model = "m.onnx"\nrecipe = {name = "w8a8", windw = 1}\n', r"recipe 'w8a8' has no parameter 'windw'"),
    ('model = "m.onnx"\nrecipe = {window = 1}\n', r"a recipe table needs a 'name' string"),
    ('model = "m.onnx"\nrecipe = "w8a8"\nmin_cosine = true\n', r"key 'min_cosine' is True \(bool\), expected a number"),
    ('model = "m.onnx"\ntext_len = 12\n', r"--text-len cannot apply to an ONNX file"),
    ('model = "m.onnx"\nheight = "tall"\n', r"key 'height' is 'tall' \(str\), expected an integer"),
    ('model = "m.onnx\n', r"does not parse"),
    ('target = "onnx"\n', r"no model to compile"),
])
def test_bad_configs_are_one_line_errors(project, capsys, text, message):
    path = project / "bad.toml"
    path.write_text(text)
    rc, err = _compile(["--config", str(path), "--out", str(project / "refused")], capsys)
    assert rc == 2 and len(err.splitlines()) == 1, err
    import re

    assert re.search(message, err), err
    assert not (project / "refused").exists()


def test_an_in_memory_models_manifest_rebuilds_with_the_model_given_again(project, capsys):
    import onnx

    art = genzip.compile(onnx.load(project / "m.onnx"), recipe="w8a8", calib_data=str(project / "calib"),
                         target="onnx", out=str(project / "mem"))
    assert art.manifest["config"]["model"] is None
    _refused(["--config", str(project / "mem" / "genzip.json")], capsys, project, "no model to compile")
    rc, err = _compile([str(project / "m.onnx"), "--config", str(project / "mem" / "genzip.json"),
                        "--out", str(project / "again")], capsys)
    assert rc == 0, err
    assert json.loads((project / "again" / "genzip.json").read_text())["passes"] == art.manifest["passes"]


def test_config_file_kinds_refused(project, capsys):
    (project / "c.ini").write_text("x")
    _refused(["--config", str(project / "c.ini")], capsys, project, "unknown extension '.ini'")
    (project / "old.json").write_text(json.dumps({"genzip_version": "0.1", "files": {}}))
    _refused(["--config", str(project / "old.json")], capsys, project, "artifact manifest without a 'config' section")
    _refused(["--config", str(project / "nope.toml")], capsys, project, "cannot read config file")
