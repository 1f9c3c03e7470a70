"""``--inputs`` and ``--calib-data``: the user's example inputs and calibration set, for an
ONNX file, a Hugging Face folder, a ``module:function`` and a preset. Both layouts of a
calibration .npz, a folder of samples, and one-line refusals (exit 2, nothing written)
before any export."""

from __future__ import annotations

import json
import os
import textwrap

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import pytest
from tiny_llm import one_layer_llama_folder

from genzip.errors import GenzipError
from genzip.frontend.user_inputs import calibration_samples, check_inputs
from genzip.tools import compile_cli

F = onnx.TensorProto.FLOAT


def _onnx_file(path, batch="batch") -> str:
    """x[batch, 4, 8] -> 3 x (MatMul, Relu) -> y;  emb = Gather(table[20, 8], ids[batch, 3])
    (the first and last GEMM stay fp32 by default, the middle one quantizes)."""
    rng = np.random.default_rng(0)
    ws = [onh.from_array((rng.standard_normal((8, 8)) / 3).astype(np.float32), f"w{i}") for i in range(3)]
    table = onh.from_array(rng.standard_normal((20, 8)).astype(np.float32), "table")
    nodes = []
    for i in range(3):
        nodes += [oh.make_node("MatMul", ["x" if i == 0 else f"r{i - 1}", f"w{i}"], [f"m{i}"]),
                  oh.make_node("Relu", [f"m{i}"], ["y" if i == 2 else f"r{i}"])]
    graph = oh.make_graph(
        [*nodes, oh.make_node("Gather", ["table", "ids"], ["emb"])], "g",
        [oh.make_tensor_value_info("x", F, [batch, 4, 8]),
         oh.make_tensor_value_info("ids", onnx.TensorProto.INT64, [batch, 3])],
        [oh.make_tensor_value_info("y", F, [batch, 4, 8]), oh.make_tensor_value_info("emb", F, [batch, 3, 8])],
        [*ws, table])
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 23)], ir_version=10), str(path))
    return str(path)


def _feeds(batch: int, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((batch, 4, 8)).astype(np.float32),
            "ids": rng.integers(0, 20, (batch, 3)).astype(np.int64)}


def _compile(args, capsys) -> tuple[int, str]:
    rc = compile_cli.main([*args, "--quiet"])
    return rc, capsys.readouterr().err.strip()


def _refused(args, capsys, tmp_path, *needles) -> None:
    rc, err = _compile([*args, "--out", str(tmp_path / "refused")], capsys)
    assert rc == 2, err
    # (transformers' own "Loading weights" bar may precede it: third-party noise is issue 15's)
    lines = [line for line in err.splitlines() if line.startswith("genzip-compile:")]
    assert len(lines) == 1 and lines[0].startswith("genzip-compile: error:") and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], err
    assert not (tmp_path / "refused").exists()


def _manifest(folder) -> dict:
    with open(os.path.join(folder, "genzip.json")) as f:
        return json.load(f)


# --- the layouts, unit level ------------------------------------------------------------

SPECS = [("x", np.dtype(np.float32), (None, 4, 8)), ("ids", np.dtype(np.int64), (None, 3))]


def test_both_calibration_layouts_and_their_sample_counts():
    leading = {"x": np.zeros((5, 2, 4, 8), np.float32), "ids": np.zeros((5, 2, 3), np.int64)}
    samples = calibration_samples(SPECS, leading)
    assert len(samples) == 5 and samples[0]["x"].shape == (2, 4, 8) and samples[0]["ids"].shape == (2, 3)
    on_batch = {"x": np.arange(6 * 32, dtype=np.float32).reshape(6, 4, 8), "ids": np.zeros((6, 3), np.int64)}
    samples = calibration_samples(SPECS, on_batch)
    assert len(samples) == 6 and samples[2]["x"].shape == (1, 4, 8)
    np.testing.assert_array_equal(samples[2]["x"][0], on_batch["x"][2])
    static = [("x", np.dtype(np.float32), (2, 4, 8))]  # a static batch of 2: rows go in pairs
    assert [s["x"].shape for s in calibration_samples(static, {"x": on_batch["x"]})] == [(2, 4, 8)] * 3
    with pytest.raises(GenzipError, match=r"6 rows on the batch axis, not a multiple of the model's static batch 4"):
        calibration_samples([("x", np.dtype(np.float32), (4, 4, 8))], {"x": on_batch["x"]})


def test_python_calibration_sources_list_generator_and_forward_loop():
    feeds = [_feeds(2, seed) for seed in range(3)]
    assert len(calibration_samples(SPECS, feeds)) == 3
    assert len(calibration_samples(SPECS, lambda: iter(feeds))) == 3

    def forward_loop(model):  # ModelOpt's shape: call the model on each batch
        for f in feeds:
            model(f["x"], ids=f["ids"])

    got = calibration_samples(SPECS, forward_loop)
    assert len(got) == 3 and np.array_equal(got[1]["ids"], feeds[1]["ids"])
    with pytest.raises(GenzipError, match="calibration sample 0 is a int, not a dict"):
        calibration_samples(SPECS, [1, 2])


@pytest.mark.parametrize("arrays, message", [
    ({"x": np.zeros((5, 4, 4, 8, 1), np.float32), "ids": np.zeros((5, 3), np.int64)},
     r"input 'x' has shape \[5, 4, 4, 8, 1\], which fits neither layout for the model's input \[\?, 4, 8\]; "
     r"give \[N, \?, 4, 8\] \(samples first\) or \[N, 4, 8\] \(samples on the batch axis\)"),
    ({"x": np.zeros((5, 4, 7), np.float32), "ids": np.zeros((5, 3), np.int64)}, r"fits neither layout"),
    ({"x": np.zeros((5, 4, 8), np.float32), "ids": np.zeros((4, 3), np.int64)}, r"different sample counts"),
    ({"x": np.zeros((5, 4, 8), np.float64), "ids": np.zeros((5, 3), np.int64)},
     r"input 'x' is float64, the model takes float32; cast it"),
    ({"xx": np.zeros((5, 4, 8), np.float32), "ids": np.zeros((5, 3), np.int64)},
     r"has an array 'xx' but the model has no such input \(did you mean: x\?\)"),
    ({"x": np.zeros((5, 4, 8), np.float32)}, r"lacks the model input 'ids'"),
])
def test_calibration_refusals_name_the_expected_shape(arrays, message):
    with pytest.raises(GenzipError, match=message):
        calibration_samples(SPECS, arrays)


def test_example_inputs_are_checked_by_name_dtype_and_static_dims():
    assert set(check_inputs(SPECS, _feeds(3))) == {"x", "ids"}
    with pytest.raises(GenzipError, match=r"'x' has shape \[3, 4, 9\], the model takes \[\?, 4, 8\]"):
        check_inputs(SPECS, {**_feeds(3), "x": np.zeros((3, 4, 9), np.float32)})


# --- ONNX file --------------------------------------------------------------------------

def test_onnx_file_inputs_become_the_example_and_fidelity_inputs(tmp_path, capsys):
    model = _onnx_file(tmp_path / "m.onnx")
    feeds = _feeds(3)
    np.savez(tmp_path / "in.npz", **feeds)
    out = tmp_path / "art"
    rc, err = _compile([model, "--target", "onnx", "--inputs", str(tmp_path / "in.npz"), "--out", str(out)], capsys)
    assert rc == 0, err
    with np.load(out / "inputs.npz") as saved:
        for name, value in feeds.items():
            np.testing.assert_array_equal(saved[name], value)
    manifest = _manifest(out)
    assert [s["shape"][0] for s in manifest["inputs"]] == ["batch", "batch"]
    assert manifest["fidelity"]["cosine"] > 0.9999 and manifest["config"]["inputs"] == "inputs.npz"


def test_onnx_file_bad_inputs_are_refused_in_one_line(tmp_path, capsys):
    model = _onnx_file(tmp_path / "m.onnx")
    np.savez(tmp_path / "names.npz", x=_feeds(2)["x"], idz=_feeds(2)["ids"])
    _refused([model, "--inputs", str(tmp_path / "names.npz")], capsys, tmp_path,
             "--inputs has an array 'idz' but the model has no such input (did you mean: ids?)")
    np.savez(tmp_path / "dtype.npz", x=_feeds(2)["x"], ids=_feeds(2)["ids"].astype(np.int32))
    _refused([model, "--inputs", str(tmp_path / "dtype.npz")], capsys, tmp_path,
             "--inputs input 'ids' is int32, the model takes int64")
    np.savez(tmp_path / "shape.npz", x=np.zeros((2, 5, 8), np.float32), ids=_feeds(2)["ids"])
    _refused([model, "--inputs", str(tmp_path / "shape.npz")], capsys, tmp_path,
             "'x' has shape [2, 5, 8], the model takes [?, 4, 8]")
    _refused([model, "--inputs", str(tmp_path / "missing.npz")], capsys, tmp_path, "does not exist")
    np.save(tmp_path / "one.npy", np.zeros(3))
    _refused([model, "--inputs", str(tmp_path / "one.npy")], capsys, tmp_path, "holds a single array, not named arrays")
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}], dtype=object), ids=_feeds(2)["ids"])
    _refused([model, "--inputs", str(tmp_path / "obj.npz")], capsys, tmp_path, "is not a plain .npz (Object arrays")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    _refused([model, "--calib-data", str(tmp_path / "junk.npz")], capsys, tmp_path, "is not a plain .npz")


def test_onnx_file_quantizes_with_calib_data_in_both_layouts_and_a_folder(tmp_path, capsys):
    model = _onnx_file(tmp_path / "m.onnx")
    _refused([model, "--recipe", "w8a8"], capsys, tmp_path, "pass 'calibrate' needs calibration")
    leading = {k: np.stack([_feeds(2, s)[k] for s in range(4)]) for k in ("x", "ids")}
    np.savez(tmp_path / "leading.npz", **leading)
    np.savez(tmp_path / "batch.npz", **_feeds(8, seed=5))
    (tmp_path / "dir").mkdir()
    for s in range(3):
        np.savez(tmp_path / "dir" / f"{s}.npz", **_feeds(1, seed=10 + s))
    for name in ("leading.npz", "batch.npz", "dir"):
        out = tmp_path / f"q-{name}"
        rc, err = _compile([model, "--target", "onnx", "--recipe", "w8a8", "--calib-data", str(tmp_path / name),
                            "--out", str(out)], capsys)
        assert rc == 0, err
        manifest = _manifest(out)
        calib = next(r for r in manifest["pass_stats"] if r["pass"].startswith("calibrate"))
        assert calib["stats"]["samples"] == {"leading.npz": 4, "batch.npz": 8, "dir": 3}[name], calib
        assert manifest["quant_fidelity"]["cosine"] > 0.99
        assert manifest["config"]["calib_data"] == str(tmp_path / name)
    np.savez(tmp_path / "bad.npz", x=np.zeros((4, 2, 4, 8, 1), np.float32), ids=leading["ids"])
    _refused([model, "--recipe", "w8a8", "--calib-data", str(tmp_path / "bad.npz")], capsys, tmp_path,
             "--calib-data input 'x' has shape [4, 2, 4, 8, 1], which fits neither layout",
             "give [N, ?, 4, 8] (samples first) or [N, 4, 8] (samples on the batch axis)")


# --- PyTorch sources: checked before the export ----------------------------------------

@pytest.fixture
def no_export(monkeypatch):
    """Fail the test if anything is exported (the refusals must come first)."""
    from genzip.frontend import from_torch

    def export(*args, **kwargs):
        raise AssertionError("exported before the user's data was checked")

    monkeypatch.setattr(from_torch, "export_onnx", export)
    monkeypatch.setattr(from_torch, "export_or_fail", export)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "gz_user_inputs_mod.py").write_text(textwrap.dedent('''
        import torch

        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.lins = torch.nn.ModuleList(torch.nn.Linear(8, 8) for _ in range(3))

            def forward(self, x, ids):
                for lin in self.lins:
                    x = torch.relu(lin(x))
                return x.sum(-1) + ids.float()

        def build():
            torch.manual_seed(0)
            return Net(), (torch.randn(2, 5, 8), torch.randint(0, 9, (2, 5)))
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "gz_user_inputs_mod:build"


def test_module_function_takes_inputs_and_calib_data(user_module, tmp_path, capsys):
    rng = np.random.default_rng(3)
    feeds = {"x": rng.standard_normal((3, 7, 8)).astype(np.float32), "ids": rng.integers(0, 5, (3, 7))}
    np.savez(tmp_path / "in.npz", **feeds)
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((6, 7, 8)).astype(np.float32),
             ids=rng.integers(0, 5, (6, 7)))
    out = tmp_path / "art"
    rc, err = _compile([user_module, "--target", "onnx", "--inputs", str(tmp_path / "in.npz"), "--recipe", "w8a8",
                        "--calib-data", str(tmp_path / "calib.npz"), "--min-cosine", "0.9", "--out", str(out)], capsys)
    assert rc == 0, err
    with np.load(out / "inputs.npz") as saved:
        np.testing.assert_array_equal(saved["x"], feeds["x"])  # traced and measured at the user's text length
    manifest = _manifest(out)
    assert manifest["fidelity"]["reference"] == "pytorch-eager"
    calib = next(r for r in manifest["pass_stats"] if r["pass"].startswith("calibrate"))
    assert calib["stats"]["samples"] == 6


def test_module_function_refusals_come_before_the_export(user_module, tmp_path, capsys, no_export):
    rng = np.random.default_rng(3)
    np.savez(tmp_path / "in.npz", x=rng.standard_normal((3, 7, 8)).astype(np.float32),
             ids=rng.integers(0, 5, (3, 7)).astype(np.int32))
    _refused([user_module, "--inputs", str(tmp_path / "in.npz")], capsys, tmp_path,
             "--inputs input 'ids' is int32, the model takes int64")
    np.savez(tmp_path / "c.npz", x=rng.standard_normal((6, 4, 8)).astype(np.float32), ids=rng.integers(0, 5, (6, 5)))
    _refused([user_module, "--recipe", "w8a8", "--calib-data", str(tmp_path / "c.npz")], capsys, tmp_path,
             "--calib-data input 'x' has shape [6, 4, 8], which fits neither layout for the model's input [?, 5, 8]")


def test_hf_folder_w8a8_works_with_calib_data_and_refuses_bad_layouts(tmp_path, capsys, monkeypatch):
    folder = one_layer_llama_folder(tmp_path / "llama")
    ids = np.random.default_rng(0).integers(0, 64, (4, 1, 16)).astype(np.int64)  # samples first
    np.savez(tmp_path / "calib.npz", input_ids=ids)
    np.savez(tmp_path / "in.npz", input_ids=ids[0])
    out = tmp_path / "art"
    rc, err = _compile([folder, "--target", "onnx", "--recipe", "w8a8", "--calib-data", str(tmp_path / "calib.npz"),
                        "--inputs", str(tmp_path / "in.npz"), "--min-cosine", "0.9", "--out", str(out)], capsys)
    assert rc == 0, err
    manifest = _manifest(out)
    assert [s["shape"][1] for s in manifest["inputs"]] == [16]  # the user's sequence length, not the default 32
    assert any(r["pass"].startswith("quant") and r["modified"] for r in manifest["pass_stats"])
    from genzip.frontend import from_torch

    monkeypatch.setattr(from_torch, "export_onnx", lambda *a, **k: pytest.fail("exported before the check"))
    np.savez(tmp_path / "bad.npz", input_ids=ids.astype(np.float32))
    _refused([folder, "--recipe", "w8a8", "--inputs", str(tmp_path / "in.npz"), "--calib-data",
              str(tmp_path / "bad.npz")], capsys, tmp_path, "--calib-data input 'input_ids' is float32")


def test_preset_takes_user_inputs(tmp_path, capsys, no_export):
    np.savez(tmp_path / "in.npz", input_ids=np.zeros((1, 8), np.int32))
    _refused(["tiny-llama", "--inputs", str(tmp_path / "in.npz")], capsys, tmp_path,
             "--inputs input 'input_ids' is int32, the model takes int64")
    np.savez(tmp_path / "in.npz", hidden=np.zeros((1, 8), np.int64))
    _refused(["tiny-llama", "--inputs", str(tmp_path / "in.npz")], capsys, tmp_path,
             "--inputs has an array 'hidden' but the model has no such input")


@pytest.mark.slow
def test_preset_inputs_set_the_example_inputs(tmp_path, capsys):
    ids = np.random.default_rng(0).integers(0, 100, (1, 12)).astype(np.int64)
    np.savez(tmp_path / "in.npz", input_ids=ids)
    out = tmp_path / "art"
    rc, err = _compile(["tiny-llama", "--target", "onnx", "--inputs", str(tmp_path / "in.npz"), "--out", str(out)],
                       capsys)
    assert rc == 0, err
    with np.load(out / "inputs.npz") as saved:
        np.testing.assert_array_equal(saved["input_ids"], ids)
    assert _manifest(out)["fidelity"]["reference"] == "pytorch-eager"


def test_a_dit_folder_provides_its_own_calibration_an_llm_folder_does_not(tmp_path, capsys):
    """Decided from config.json before any weight is read: a DiT folder passes the needs
    check (it then fails on its missing weights here), an LLM folder is refused at once."""
    (tmp_path / "dit").mkdir()
    (tmp_path / "dit" / "config.json").write_text(json.dumps({"_class_name": "PixArtTransformer2DModel"}))
    _refused([str(tmp_path / "dit"), "--recipe", "w8a8"], capsys, tmp_path, "could not load")
    (tmp_path / "llm").mkdir()
    (tmp_path / "llm" / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    _refused([str(tmp_path / "llm"), "--recipe", "w8a8"], capsys, tmp_path,
             "pass 'calibrate' needs calibration, which a Hugging Face folder does not provide")
    np.savez(tmp_path / "c.npz", input_ids=np.zeros((2, 1, 8), np.int64))
    _refused([str(tmp_path / "llm"), "--recipe", "w8a8", "--calib-data", str(tmp_path / "c.npz")], capsys, tmp_path,
             "could not load")  # --calib-data met the need; the (weightless) folder fails next
