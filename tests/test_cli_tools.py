"""genzip run / bench / inspect / passes on a compiled artifact, and their refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from genzip.tools import genzip_cli


def genzip(capsys, *argv: str) -> tuple[int, str, str]:
    rc = genzip_cli.main(list(argv))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_run_prints_output_stats(pixart_ort, capsys):
    folder, manifest = pixart_ort
    rc, out, err = genzip(capsys, "run", folder, "--json")
    assert rc == 0, err
    result = json.loads(out)
    name = manifest["outputs"][0]["name"]
    assert result["backend"] == "onnxruntime"
    assert result["outputs"][name]["shape"] == [2, 8, 16, 16]
    assert result["outputs"][name]["finite"]


def test_run_with_npz_and_new_batch(pixart_ort, capsys, tmp_path):
    folder, _ = pixart_ort
    with np.load(os.path.join(folder, "inputs.npz")) as data:
        feeds = {k: np.concatenate([data[k]] * 2) for k in data.files}
    np.savez(tmp_path / "x.npz", **feeds)
    rc, out, err = genzip(capsys, "run", folder, "--inputs", str(tmp_path / "x.npz"))
    assert rc == 0, err
    assert "[4, 8, 16, 16]" in out


@pytest.mark.parametrize("change, needle", [
    (lambda f: f.update(hidden_states=f["hidden_states"][:, :2]), "expected"),
    (lambda f: f.update(hidden_states=f["hidden_states"].astype(np.float64)), "dtype float64"),
    (lambda f: f.pop("timestep"), "missing input 'timestep'"),
    (lambda f: f.update(timestep=f["timestep"][:1]), "earlier input set"),
])
def test_run_rejects_wrong_inputs(pixart_ort, capsys, tmp_path, change, needle):
    folder, _ = pixart_ort
    with np.load(os.path.join(folder, "inputs.npz")) as data:
        feeds = {k: data[k] for k in data.files}
    change(feeds)
    np.savez(tmp_path / "bad.npz", **feeds)
    rc, _, err = genzip(capsys, "run", folder, "--inputs", str(tmp_path / "bad.npz"))
    assert rc == 2, err
    assert needle in err and len(err.strip().splitlines()) == 1


def test_run_refuses_pickled_npz(pixart_ort, capsys, tmp_path):
    folder, _ = pixart_ort
    np.savez(tmp_path / "obj.npz", hidden_states=np.array([{"a": 1}], dtype=object))
    rc, _, err = genzip(capsys, "run", folder, "--inputs", str(tmp_path / "obj.npz"))
    assert rc == 2 and "numpy.savez" in err


def test_bench_vs_reports_interleaved_ratio(pixart_ort, capsys):
    folder, _ = pixart_ort
    rc, out, err = genzip(capsys, "bench", folder, "--vs", folder, "--repeat", "3", "--warmup", "1", "--json")
    assert rc == 0, err
    result = json.loads(out)
    assert result["median_ms"] > 0 and result["other_median_ms"] > 0
    assert result["speedup"] == pytest.approx(result["other_median_ms"] / result["median_ms"])


def test_inspect_shows_ops_and_stats(pixart_ort, capsys):
    folder, _ = pixart_ort
    rc, out, err = genzip(capsys, "inspect", folder)
    assert rc == 0, err
    assert "Attention" in out and "canonicalize-attn" in out and "cosine" in out


def test_missing_artifact(capsys, tmp_path):
    rc, _, err = genzip(capsys, "inspect", str(tmp_path / "nope"))
    assert rc == 2 and "does not exist" in err


def test_list_commands(capsys):
    for sub, needle in (("passes", "canonicalize-attn"), ("recipes", "cleanup"), ("presets", "tiny-pixart")):
        rc, out, _ = genzip(capsys, sub)
        assert rc == 0 and needle in out


def test_console_scripts_exit_codes(tmp_path):
    """The installed entry points: one-line error and exit 2 from a real process."""
    proc = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "genzip-compile"), "nope-preset", "--out", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "unknown model reference" in proc.stderr
