"""End to end: genzip-compile on a preset, the artifact it writes, and its refusals."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx_ir as ir
import pytest

from genzip.backends.artifact import sha256_file
from genzip.tools import compile_cli


def compile_(capsys, *argv: str) -> tuple[int, str, str]:
    rc = compile_cli.main(list(argv) + ["--quiet"])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_ort_artifact_layout_and_manifest(pixart_ort):
    folder, manifest = pixart_ort
    assert sorted(os.listdir(folder)) == sorted(
        ["genzip.json", "report.md", "model.onnx", "model.ort.onnx", "inputs.npz", "inputs.json"]
    )
    for key in ("genzip_version", "source", "target", "passes", "inputs", "outputs", "files",
                "fidelity", "pass_stats", "versions"):
        assert key in manifest, key
    assert manifest["target"] == "ort"
    assert manifest["passes"] == "canonicalize-attn,dce"
    assert [r["pass"] for r in manifest["pass_stats"]] == ["canonicalize-attn", "dce"]
    for name, digest in manifest["files"].items():
        assert sha256_file(os.path.join(folder, name)) == digest
    assert manifest["fidelity"]["reference"] == "pytorch-eager"
    assert manifest["fidelity"]["cosine"] > 0.999
    assert manifest["export_fidelity"]["cosine"] > 0.999
    assert {"torch", "onnx", "onnxruntime", "onnx-ir"} <= set(manifest["versions"])
    names = [s["name"] for s in manifest["inputs"]]
    assert names == ["hidden_states", "timestep", "encoder_hidden_states", "encoder_attention_mask"]
    # The batch axis stays symbolic in the manifest.
    assert isinstance(manifest["inputs"][0]["shape"][0], str)
    report = open(os.path.join(folder, "report.md")).read()
    assert "canonicalize-attn" in report and "cosine" in report


def test_same_spec_and_seed_give_identical_hashes(tmp_path, capsys, pixart_ort):
    _, first = pixart_ort
    rc, _, err = compile_(capsys, "tiny-pixart", "--target", "ort", "--out", str(tmp_path / "b"),
                          "--passes", "canonicalize-attn,dce")
    assert rc == 0, err
    second = json.load(open(tmp_path / "b" / "genzip.json"))
    assert second["files"] == first["files"]


def test_onnx_target_writes_only_the_model(tmp_path, capsys):
    rc, out, err = compile_(capsys, "tiny-llama", "--target", "onnx", "--out", str(tmp_path / "llm"))
    assert rc == 0, err
    assert sorted(os.listdir(tmp_path / "llm")) == ["genzip.json", "inputs.json", "inputs.npz", "model.onnx", "report.md"]
    model = ir.load(str(tmp_path / "llm" / "model.onnx"))
    assert any(n.op_type == "Attention" for n in model.graph)
    assert "wrote" in out


def test_onnx_file_input_reference_is_the_source_file(tmp_path, capsys, pixart_ort):
    folder, _ = pixart_ort
    rc, _, err = compile_(capsys, os.path.join(folder, "model.onnx"), "--target", "onnx",
                          "--out", str(tmp_path / "again"), "--passes", "dce")
    assert rc == 0, err
    manifest = json.load(open(tmp_path / "again" / "genzip.json"))
    assert manifest["fidelity"]["reference"] == "source-onnx"
    assert manifest["fidelity"]["cosine"] > 0.99999


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["/no/such/model.onnx"], "does not exist"),
        (["no-such-preset"], "did you mean"),
        (["tiny-pixart", "--passes", "canonicalise-attn"], "did you mean: canonicalize-attn"),
        (["tiny-pixart", "--passes", "fold-constants{size=3}"], "did you mean: size-limit"),
        (["tiny-pixart", "--passes", "dce{"], "malformed pass spec"),
        (["tiny-pixart", "--target", "trt"], "pip install genzip[trt]"),
        (["tiny-pixart", "--recipe", "w9a9"], "unknown recipe"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, argv, needle):
    out = tmp_path / "out"
    rc, _, err = compile_(capsys, *argv, "--out", str(out))
    assert rc == 2
    assert needle in err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    assert not out.exists()


def test_corrupt_onnx_file(tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 10)
    rc, _, err = compile_(capsys, str(bad), "--out", str(tmp_path / "o"))
    assert rc == 2 and "ONNX" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_non_empty_out_needs_force(tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    rc, _, err = compile_(capsys, "tiny-pixart", "--out", str(out))
    assert rc == 2 and "--force" in err
    assert (out / "keep.txt").read_text() == "user data"
    rc, _, err = compile_(capsys, "tiny-pixart", "--target", "onnx", "--out", str(out), "--force")
    assert rc == 0, err
    assert not (out / "keep.txt").exists() and (out / "genzip.json").exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".o.")]  # no temp folders left


def test_unwritable_out(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    rc, _, err = compile_(capsys, "tiny-pixart", "--out", str(blocker / "sub"))
    assert rc == 2 and "cannot write" in err


def test_pass_timing_and_print_ir(tmp_path, capsys):
    rc, _, err = compile_(capsys, "tiny-pixart", "--target", "onnx", "--out", str(tmp_path / "t"),
                          "--passes", "canonicalize-attn,dce", "--pass-timing", "--print-ir-after", "dce")
    assert rc == 0
    assert "Pass execution timing report" in err
    assert "IR after dce" in err and "Attention" in err


def test_example_inputs_match_manifest(pixart_ort):
    folder, manifest = pixart_ort
    with np.load(os.path.join(folder, "inputs.npz")) as data:
        assert sorted(data.files) == sorted(s["name"] for s in manifest["inputs"])


def test_failing_pass_leaves_a_reproducer_and_no_artifact(tmp_path, capsys, monkeypatch, pixart_ort):
    from genzip.passes.infra import registry

    monkeypatch.setitem(registry._PASSES, "test-dangling-use", "broken_pass:DanglingUsePass")
    folder, _ = pixart_ort
    out = tmp_path / "o"
    rc, _, err = compile_(capsys, os.path.join(folder, "model.onnx"), "--target", "onnx", "--out", str(out),
                          "--passes", "dce,test-dangling-use")
    assert rc == 1 and "reproducer" in err and "Traceback" not in err
    assert not out.exists()
    repro = tmp_path / "o.reproducer"
    assert (repro / "spec.txt").read_text().strip() == "test-dangling-use"
    before = ir.load(str(repro / "model.onnx"))  # the input of the failing pass, loadable as is
    assert len(list(before.graph)) == len(list(ir.load(os.path.join(folder, "model.onnx")).graph))


def test_models_over_2gb_get_external_data(tmp_path, capsys, monkeypatch):
    from genzip.backends import onnx_files

    monkeypatch.setattr(onnx_files, "PROTOBUF_LIMIT", 1024)  # stands in for 2 GB
    rc, _, err = compile_(capsys, "tiny-pixart", "--target", "onnx", "--out", str(tmp_path / "big"))
    assert rc == 0, err
    manifest = json.load(open(tmp_path / "big" / "genzip.json"))
    assert "model.onnx.data" in manifest["files"]
    assert os.path.getsize(tmp_path / "big" / "model.onnx") < os.path.getsize(tmp_path / "big" / "model.onnx.data")


def test_min_cosine_gates_lossy_passes(tmp_path, capsys, pixart_ort):
    """The fidelity gate is the user's: a window of 1 token passes 0.99 but not 0.99999."""
    from genzip.tools import compile_cli

    src = os.path.join(pixart_ort[0], "model.onnx")
    argv = [src, "--target", "onnx", "--passes", "canonicalize-attn,window-attn{tokens=1}", "--quiet"]
    assert compile_cli.main(argv + ["--out", str(tmp_path / "strict"), "--min-cosine", "0.99999"]) == 2
    err = capsys.readouterr().err
    assert "< 0.99999" in err and "lower --min-cosine" in err
    assert not (tmp_path / "strict").exists()
    assert compile_cli.main(argv + ["--out", str(tmp_path / "ok")]) == 0
    with open(tmp_path / "ok" / "genzip.json") as f:
        assert 0.99 <= json.load(f)["fidelity"]["cosine"] < 0.99999
