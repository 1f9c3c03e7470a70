"""The compile context: passes get their inputs as an argument, declare what they
need, and the driver refuses a pipeline whose needs the source cannot meet before
it loads or exports anything."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import onnx_ir as ir
import pytest
from quant_models import feeds_for, mlp
from tiny_llm import one_layer_llama_folder

from genzip.errors import GenzipError
from genzip.passes import build_pipeline, run_pipeline
from genzip.passes.infra.context import CALIBRATION, TORCH_MODULE, PassContext, check_needs


def test_passes_declare_what_they_need():
    needs = {p.name: p.needs() for p in build_pipeline(
        "annotate-precision,calibrate,smooth,sensitivity{metrics=grad},quant").passes}
    assert needs["annotate-precision"] == frozenset() and needs["quant"] == frozenset()
    assert needs["calibrate"] == {CALIBRATION} and needs["smooth"] == {CALIBRATION}
    assert needs["sensitivity"] == {CALIBRATION, TORCH_MODULE}
    assert build_pipeline("annotate-precision,calibrate{data=x.npz}").passes[1].needs() == frozenset()


def test_check_needs_names_the_pass_and_the_fix():
    passes = build_pipeline("annotate-precision,calibrate,quant").passes
    check_needs(passes, frozenset({CALIBRATION}), "a preset")
    with pytest.raises(GenzipError, match=r"pass 'calibrate' needs calibration, which an ONNX file does not "
                                          r"provide; give the pass a calibration set with data=FILE.npz"):
        check_needs(passes, frozenset(), "an ONNX file")


def test_run_pipeline_hands_the_context_to_every_pass():
    model = mlp(seed=3)
    calib = feeds_for(model, seed=1, n=3)
    pipeline = build_pipeline("annotate-precision,calibrate,quant{scheme=w8a8}")
    with pytest.raises(GenzipError, match="needs calibration, which the pass context does not provide"):
        run_pipeline(model, pipeline)
    records = run_pipeline(model, pipeline, context=PassContext(calibration=calib))
    assert [r.name for r in records] == ["annotate-precision", "calibrate", "quant"]
    assert any(n.op_type == "QuantizeLinear" for n in model.graph)


def test_a_lazy_calibration_source_is_sampled_only_when_a_pass_calibrates():
    model = mlp(seed=4)
    calls = []

    def source():
        calls.append(1)
        return feeds_for(model, seed=2)

    context = PassContext(calibration=source)
    run_pipeline(model, build_pipeline("annotate-precision"), context=context)
    assert calls == []
    annotated = frozenset({"quant-annotated"})
    run_pipeline(model, build_pipeline("calibrate", initial_facts=annotated), context=context)
    assert calls == [1]


def test_no_context_var_or_global_carries_pass_inputs():
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "passes")
    offenders = []
    for dirpath, _, files in os.walk(root):
        for name in files:
            if name.endswith(".py"):
                text = open(os.path.join(dirpath, name)).read()
                if "import contextvars" in text or "from contextvars" in text:
                    offenders.append(name)
    assert offenders == []


def test_compile_fails_fast_on_a_folder_without_calibration_data(tmp_path):
    folder = one_layer_llama_folder(tmp_path / "llama")
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "genzip.tools.compile_cli", folder, "--recipe", "w8a8",
                             "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - start
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("genzip-compile:")]
    assert len(lines) == 1 and "pass 'calibrate' needs calibration, which a Hugging Face folder does not" in lines[0]
    assert "data=FILE.npz" in lines[0] and "Traceback" not in result.stderr
    assert "exporting" not in result.stderr.lower() and not (tmp_path / "out").exists()
    assert elapsed < 3.0 + _python_startup()  # the export alone takes several seconds


def _python_startup() -> float:
    """This machine's cost of starting Python and importing the CLI, which is not the check's."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import genzip.tools.compile_cli"], check=True, timeout=120)
    return time.perf_counter() - start


def test_grad_sensitivity_on_an_onnx_file_is_refused_before_loading(tmp_path):
    model = mlp(seed=5)
    path = tmp_path / "m.onnx"
    ir.save(model, str(path))
    result = subprocess.run([sys.executable, "-m", "genzip.tools.compile_cli", str(path), "--passes",
                             "annotate-precision,sensitivity{metrics=grad data=x.npz}", "--out",
                             str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "needs torch module, which an ONNX file does not provide" in result.stderr


def test_the_writer_gates_fidelity_before_building_an_engine(tmp_path, monkeypatch):
    import types

    from genzip.backends import write

    def no_engine(*args, **kwargs):
        raise AssertionError("the TensorRT engine was built before the fidelity gate ran")

    monkeypatch.setattr(write, "write_engine", no_engine)
    model = mlp(seed=6)
    feeds = feeds_for(model, seed=7)[0]
    wrong = {model.graph.outputs[0].name: -np.ones([int(d) for d in model.graph.outputs[0].shape], np.float32)}
    source = types.SimpleNamespace(example_inputs=feeds, source="mlp", kind="onnx", fidelity=None, info={})
    compiled = write.Compiled(model, source, "", [], wrong, "test")
    with pytest.raises(GenzipError, match="compiled model disagrees with its reference"):
        write.write_artifact(compiled, str(tmp_path / "art"), target="trt", force=False)
    assert not (tmp_path / "art").exists() and os.listdir(tmp_path) == []
