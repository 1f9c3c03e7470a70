"""load_model reference kinds other than presets: module:function, .onnx files, bad input."""

from __future__ import annotations

import os
import textwrap

import numpy as np
import onnx
import onnx.helper as oh
import pytest

from genzip.errors import GenzipError
from genzip.frontend import cosine, load_model, max_abs_err
from genzip.frontend.onnx_inputs import DEFAULT_DIM

USER_MODULE = textwrap.dedent(
    """
    import torch

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = torch.nn.Linear(16, 48)

        def forward(self, x, scale):
            q, k, v = self.qkv(x).unflatten(-1, (3, 2, 8)).permute(2, 0, 3, 1, 4)
            o = torch.nn.functional.scaled_dot_product_attention(q, k, v)
            return o.transpose(1, 2).flatten(2) * scale

    def build():
        torch.manual_seed(0)
        return Block(), (torch.randn(2, 10, 16), torch.ones(2, 1, 1))

    def build_kw(seed=0, batch=3):
        torch.manual_seed(seed)
        return Block(), {"x": torch.randn(batch, 10, 16), "scale": torch.ones(batch, 1, 1)}

    def not_a_pair():
        return 42

    class FixedBatch(torch.nn.Module):
        def forward(self, x):
            return x.reshape(2, -1).sum(-1)  # hard-codes batch 2

    def build_fixed():
        return FixedBatch(), (torch.randn(2, 5, 3),)
    """
)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "gz_user_model.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "gz_user_model"


def test_callable_ref_positional(user_module):
    sm = load_model(f"{user_module}:build")
    assert sm.kind == "callable" and sm.info["dynamic"] is True
    assert [v.name for v in sm.model.graph.inputs] == ["x", "scale"]
    assert [v.name for v in sm.model.graph.outputs] == ["output"]
    assert sum(n.op_type == "Attention" for n in sm.model.graph) == 1
    assert sm.example_inputs["x"].shape == (2, 10, 16)
    assert sm.fidelity["cosine"] > 0.999


def test_callable_ref_dict_seed_batch(user_module):
    sm = load_model(f"{user_module}:build_kw", batch=1, seed=5)
    assert list(sm.example_inputs) == ["x", "scale"] and sm.example_inputs["x"].shape == (1, 10, 16)
    assert sm.info["dynamic"] is True  # traced at batch 2, verified at 1 and 2


def test_callable_ref_errors(user_module):
    with pytest.raises(GenzipError, match="has no function 'buidl'.*did you mean: build"):
        load_model(f"{user_module}:buidl")
    with pytest.raises(GenzipError, match="cannot import module 'no_such_pkg_xyz'"):
        load_model("no_such_pkg_xyz:build")
    with pytest.raises(GenzipError, match="not a \\(module, example_inputs\\) pair"):
        load_model(f"{user_module}:not_a_pair")
    with pytest.raises(GenzipError, match="takes no 'batch' parameter"):
        load_model(f"{user_module}:build", batch=4)


def test_static_fallback_when_batch_is_fixed(user_module, caplog):
    sm = load_model(f"{user_module}:build_fixed")
    assert sm.info["dynamic"] is False and sm.info["dynamic_axes"] == {}
    assert sm.model.graph.inputs[0].shape.dims == (2, 5, 3)
    assert "static batch" in caplog.text and sm.fidelity["cosine"] > 0.999


def test_fidelity_failure_is_a_genzip_error(user_module, monkeypatch):
    monkeypatch.setattr("genzip.frontend.verify.EXPORT_MIN_COSINE", 1.5)
    with pytest.raises(GenzipError, match="does not match eager PyTorch"):
        load_model(f"{user_module}:build")


def test_missing_paths():
    with pytest.raises(GenzipError, match="does not exist"):
        load_model("/no/such/model.onnx")
    with pytest.raises(GenzipError, match="does not exist"):
        load_model("./no_such_folder/")
    with pytest.raises(GenzipError, match="never downloads"):
        load_model("PixArt-alpha/PixArt-XL-2-1024-MS")


def test_unknown_preset_did_you_mean():
    with pytest.raises(GenzipError, match="did you mean: tiny-pixart"):
        load_model("tiny-pixar")
    with pytest.raises(GenzipError, match="positive integer"):
        load_model("tiny-llama", batch=0)


@pytest.mark.parametrize("content", ["random", "truncated", "empty"])
def test_corrupt_onnx(tmp_path, content):
    good = _tiny_onnx(tmp_path / "good.onnx")
    data = {"random": os.urandom(4096), "truncated": good[: len(good) // 2], "empty": b""}[content]
    path = tmp_path / "bad.onnx"
    path.write_bytes(data)
    with pytest.raises(GenzipError, match="is not a valid ONNX model"):
        load_model(str(path))


def _tiny_onnx(path) -> bytes:
    x = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch_size", "seq", 8])
    ids = oh.make_tensor_value_info("ids", onnx.TensorProto.INT64, ["batch_size", 4])
    mask = oh.make_tensor_value_info("attention_mask", onnx.TensorProto.INT64, ["batch_size", "seq"])
    w = oh.make_tensor("w", onnx.TensorProto.FLOAT, [8], np.arange(8, dtype=np.float32))
    y = oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch_size", "seq", 8])
    graph = oh.make_graph([oh.make_node("Add", ["x", "w"], ["y"])], "g", [x, ids, mask], [y], [w])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 21)])
    model.ir_version = 10
    data = model.SerializeToString()
    path.write_bytes(data)
    return data


def test_onnx_example_inputs_synthesized(tmp_path):
    path = tmp_path / "tiny.onnx"
    _tiny_onnx(path)
    sm = load_model(str(path), seed=7, batch=3)
    assert sm.kind == "onnx" and sm.fidelity is None
    feeds = sm.example_inputs
    assert feeds["x"].shape == (3, DEFAULT_DIM, 8) and feeds["x"].dtype == np.float32
    assert feeds["ids"].shape == (3, 4) and feeds["ids"].dtype == np.int64
    assert (feeds["attention_mask"] == 1).all() and feeds["attention_mask"].shape == (3, DEFAULT_DIM)
    again = load_model(str(path), seed=7, batch=3).example_inputs
    assert all(np.array_equal(feeds[k], again[k]) for k in feeds)  # seeded
    assert load_model(str(path)).example_inputs["x"].shape[0] == 1


def test_compare_helpers():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert cosine(a, a) == pytest.approx(1.0)
    assert cosine(a, -a) == pytest.approx(-1.0)
    assert cosine(np.zeros(3), np.zeros(3)) == 1.0 and cosine(np.zeros(3), np.ones(3)) == 0.0
    assert np.isnan(cosine([1.0, np.nan], [1.0, 1.0]))
    assert max_abs_err(a, a + 0.5) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        cosine(np.ones(3), np.ones(4))
