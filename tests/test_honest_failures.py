"""ONNX files whose integer inputs feed indices, sizes or axes compile on synthesized
inputs; ONNX Runtime's refusals of a user's model are one-line user errors (exit 2)."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnx.parser
import pytest

from genzip.frontend.onnx_inputs import synthesize_inputs
from genzip.ort_session import ort_failure
from genzip.tools import compile_cli

GATHER = """
<ir_version: 8, opset_import: ["" : 17]>
g (int64[batch, 4] ids) => (float[batch, 4, 3] y) <float[5, 3] table = {1,2,3,4,5,6,7,8,9,10,11,12,13,14,15}> {
    y = Gather <axis = 0> (table, ids)
}
"""
SLICE = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 3, 20] x, int64[1] starts, int64[1] ends, int64[1] axes, int64[1] steps) => (float[?, ?, ?] y) {
    y = Slice (x, starts, ends, axes, steps)
}
"""
TOPK = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1, 8] x, int64[1] k) => (float[1, ?] values, int64[1, ?] indices) {
    values, indices = TopK <axis = -1> (x, k)
}
"""
SPLIT = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 12] x, int64[n] sizes) => (float[2, ?] a, float[2, ?] b, float[2, ?] c) {
    a, b, c = Split <axis = 1> (x, sizes)
}
"""
# The indices pass through an Add genzip does not model: the synthesized ids overflow the table.
HIDDEN_INDEX = """
<ir_version: 8, opset_import: ["" : 17]>
g (int64[1, 4] ids) => (float[1, 4, 3] y) <float[5, 3] table = {1,2,3,4,5,6,7,8,9,10,11,12,13,14,15}, int64 ten = {10}> {
    shifted = Add (ids, ten)
    y = Gather <axis = 0> (table, shifted)
}
"""
# Valid ONNX as far as onnx goes (a custom domain), but ONNX Runtime has no such op.
UNKNOWN_OP = """
<ir_version: 8, opset_import: ["" : 17, "acme.ops" : 1]>
g (float[2, 3] x) => (float[2, 3] y) {
    y = acme.ops.Frobnicate (x)
}
"""


def _write(tmp_path, text: str, name: str = "model.onnx") -> str:
    path = str(tmp_path / name)
    onnx.save(onnx.parser.parse_model(text), path)
    return path


@pytest.mark.parametrize("text", [GATHER, SLICE, TOPK, SPLIT], ids=["gather", "slice-axes", "topk-k", "split-sizes"])
def test_constrained_integer_inputs_compile(tmp_path, text, capsys):
    path = _write(tmp_path, text)
    out = str(tmp_path / "art")
    rc = compile_cli.main([path, "--target", "onnx", "--out", out, "--quiet"])
    assert rc == 0, capsys.readouterr().err
    feeds = np.load(os.path.join(out, "inputs.npz"))
    if text is GATHER:
        assert feeds["ids"].min() >= 0 and feeds["ids"].max() < 5
    if text is SLICE:
        assert feeds["axes"].tolist() == [0] and feeds["steps"].tolist() == [1]
    if text is TOPK:
        assert feeds["k"].tolist() == [1]
    if text is SPLIT:
        assert feeds["sizes"].tolist() == [4, 4, 4]


def test_gather_indices_stay_in_range_for_every_seed():
    model = onnx.parser.parse_model(GATHER)
    import onnx_ir as ir

    graph = ir.from_proto(model).graph
    for seed in range(20):
        feeds, _ = synthesize_inputs(graph, seed=seed, batch=3)
        assert feeds["ids"].shape == (3, 4) and 0 <= feeds["ids"].min() and feeds["ids"].max() <= 4


def test_runtime_failure_on_synthesized_inputs_names_node_and_suggests_inputs(tmp_path, capsys):
    path = _write(tmp_path, HIDDEN_INDEX)
    out = tmp_path / "art"
    rc = compile_cli.main([path, "--target", "onnx", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and "internal error" not in err
    assert "(Gather)" in err and "--inputs" in err and "made up" in err
    assert not out.exists()


def test_file_onnxruntime_cannot_load_is_a_user_error(tmp_path, capsys):
    path = _write(tmp_path, UNKNOWN_OP)
    rc = compile_cli.main([path, "--target", "onnx", "--out", str(tmp_path / "art"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and "internal error" not in err
    assert "ONNX Runtime cannot load" in err and "Frobnicate" in err


def test_ort_failure_names_node_and_op():
    class Fake(Exception):
        pass

    text = ("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Non-zero status code returned while running Gather "
            "node. Name:'emb' Status Message: indices element out of data bounds, idx=9 must be within [-5,4]")
    assert ort_failure(Fake(text)) == "node 'emb' (Gather): indices element out of data bounds, idx=9 must be within [-5,4]"
    assert ort_failure(Fake("[ONNXRuntimeError] : 1 : FAIL : something else\nmore")) == "something else"
