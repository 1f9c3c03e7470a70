"""Models past the in-memory limit reach ORT by path with external data, never as one protobuf:
the session helpers, calibrate, smooth and sensitivity (the limit is lowered to 0 here instead
of building 2 GB; tests/test_over_2gb.py builds a real one)."""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir
from helpers_onnx import model_from_text

import genzip.ort_session as ort_session
from genzip.passes import build_pipeline, run_pipeline
from genzip.passes.infra.context import PassContext

MLP = """
<ir_version: 9, opset_import: ["" : 23]>
g (float[2, 8] x) => (float[2, 8] y) <float[8, 8] w1 = {W1}, float[8, 8] w2 = {W2}> {
    h = MatMul (x, w1)
    r = Relu (h)
    y = MatMul (r, w2)
}
""".replace("W1", ",".join(str(i % 7 - 3) for i in range(64))).replace("W2", ",".join(str(i % 5 - 2) for i in range(64)))


def _spy(monkeypatch) -> list[type]:
    kinds: list[type] = []
    real = ort_session.make_session

    def spy(source, *args, **kwargs):
        kinds.append(type(source))
        return real(source, *args, **kwargs)

    monkeypatch.setattr(ort_session, "make_session", spy)
    return kinds


def _calibrated(model: ir.Model) -> list[float]:
    feeds = [{"x": np.random.default_rng(s).standard_normal((2, 8)).astype(np.float32)} for s in range(3)]
    spec = "annotate-precision{keep-defaults=false},calibrate{use-cache=false}"
    run_pipeline(model, build_pipeline(spec), context=PassContext(calibration=feeds))
    return [json.loads(n.metadata_props["genzip.quant.calib"])["amax"] for n in model.graph
            if "genzip.quant.calib" in n.metadata_props]


def test_calibrate_by_path_matches_in_memory(monkeypatch):
    kinds = _spy(monkeypatch)
    small = _calibrated(model_from_text(MLP))
    assert kinds == [bytes] and len(small) == 2
    monkeypatch.setattr(ort_session, "IN_MEMORY_LIMIT", 0)
    kinds.clear()
    model = model_from_text(MLP)
    outputs = [v.name for v in model.graph.outputs]
    assert _calibrated(model) == small
    assert kinds == [str]  # a path to the temporary model with external data
    assert [v.name for v in model.graph.outputs] == outputs  # the probe outputs were taken off again


def test_run_model_by_path_matches(monkeypatch):
    model = model_from_text(MLP)
    feeds = {"x": np.ones((2, 8), np.float32)}
    expected = ort_session.run_model(model, feeds)
    monkeypatch.setattr(ort_session, "IN_MEMORY_LIMIT", 0)
    kinds = _spy(monkeypatch)
    got = ort_session.run_model(model, feeds)
    assert kinds == [str]
    np.testing.assert_array_equal(got["y"], expected["y"])


def _feeds(n: int) -> list[dict[str, np.ndarray]]:
    return [{"x": np.random.default_rng(s).standard_normal((2, 8)).astype(np.float32)} for s in range(n)]


def _smoothed(model: ir.Model) -> list[np.ndarray]:
    spec = "annotate-precision{keep-defaults=false},smooth"
    run_pipeline(model, build_pipeline(spec), context=PassContext(calibration=_feeds(3)))
    return [v.const_value.numpy() for v in model.graph.initializers.values()]


def test_smooth_by_path_matches_in_memory(monkeypatch):
    kinds = _spy(monkeypatch)
    small = _smoothed(model_from_text(MLP))
    assert kinds == [bytes]
    monkeypatch.setattr(ort_session, "IN_MEMORY_LIMIT", 0)
    kinds.clear()
    model = model_from_text(MLP)
    outputs = [v.name for v in model.graph.outputs]
    got = _smoothed(model)
    assert kinds == [str]
    assert len(got) == len(small) and all(np.array_equal(a, b) for a, b in zip(got, small))
    assert [v.name for v in model.graph.outputs] == outputs


def _named_mlp() -> ir.Model:
    model = model_from_text(MLP)
    for i, node in enumerate(model.graph):
        node.name = f"n{i}"  # plan keys
    return model


def _sensitivity(model: ir.Model) -> dict:
    spec = "annotate-precision{keep-defaults=false},sensitivity{candidates=w8a8,fp16 use-cache=false}"
    run_pipeline(model, build_pipeline(spec), context=PassContext(calibration=_feeds(2)))
    return json.loads(model.metadata_props["genzip.sensitivity"])


def test_sensitivity_by_path_matches_in_memory(monkeypatch):
    kinds = _spy(monkeypatch)
    small = _sensitivity(_named_mlp())
    assert kinds == [bytes, bytes]  # the probe session, then the gated session
    monkeypatch.setattr(ort_session, "IN_MEMORY_LIMIT", 0)
    kinds.clear()
    assert _sensitivity(_named_mlp()) == small
    assert kinds == [str, str]


def test_full_verify_of_external_weights_from_another_folder(tmp_path, monkeypatch):
    """The verifier checks a model whose weights are in an external file by their types:
    the references are not resolved against the working directory, and no proto holds them."""
    from genzip.passes.infra.invariants import verify

    w = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)  # past the checked-weight limit
    folder = tmp_path / "m"
    folder.mkdir()
    big = model_from_text(f"""<ir_version: 9, opset_import: ["" : 23]>
g (float[2, 64] x) => (float[2, 64] y) <float[64, 64] w = {{{", ".join(map(str, w.ravel().tolist()))}}}> {{
    y = MatMul (x, w)
}}""")
    ir.save(big, str(folder / "model.onnx"), external_data="model.onnx.data")
    loaded = ir.load(str(folder / "model.onnx"))
    monkeypatch.chdir(tmp_path)
    verify(loaded, "full")  # was: "Data of TensorProto (tensor name: w) should be stored in model.onnx.data"
