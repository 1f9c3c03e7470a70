"""``genzip.compile(model, example_inputs, ...)``: in-memory models (nn.Module, diffusers and
transformers objects, onnx.ModelProto, onnx_ir.Model), calibration from Python (lists,
generators, ModelOpt's forward_loop), the returned Artifact and its temporary folder, and
the keywords staying in step with genzip-compile's flags."""

from __future__ import annotations

import gc
import os

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from test_user_inputs import _feeds, _onnx_file

import genzip
from genzip.errors import GenzipError


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lins = torch.nn.ModuleList(torch.nn.Linear(8, 8) for _ in range(3))

    def forward(self, x):
        for lin in self.lins:
            x = torch.relu(lin(x))
        return x


def test_genzip_compile_is_callable_and_still_the_driver_module():
    import importlib
    import inspect

    # `import genzip` alone leaves the driver unimported; the package's __getattr__ brings it
    assert genzip.__getattr__("compile") is importlib.import_module("genzip.compile")
    assert inspect.ismodule(genzip.compile) and callable(genzip.compile)
    from genzip.compile import CompileOptions, compile_model  # the old import path stays

    assert CompileOptions().target == "ort" and callable(compile_model)
    with pytest.raises(AttributeError, match="has no attribute 'compyle'"):
        genzip.compyle  # noqa: B018 - the attribute access is the test


def test_an_nn_module_compiles_into_a_temporary_artifact_the_object_owns():
    torch.manual_seed(0)
    x, net = torch.randn(2, 5, 8), _Net()
    art = genzip.compile(net, (x.numpy(),), target="onnx")  # NumPy arrays or tensors
    folder = art.folder
    assert art.temporary and os.path.isfile(os.path.join(folder, "model.onnx"))
    assert art.fidelity["reference"] == "pytorch-eager" and art.fidelity["cosine"] > 0.9999
    assert art.manifest["source"] == "python:_Net" and art.manifest["config"]["model"] is None
    with np.load(os.path.join(folder, "inputs.npz")) as saved:
        np.testing.assert_array_equal(saved["x"], x.numpy())
    with torch.no_grad():
        expected = net(x).numpy()
    np.testing.assert_allclose(art.load()(x=x.numpy())["output"], expected, rtol=1e-4, atol=1e-5)
    art.close()
    assert not os.path.exists(folder)


def test_a_temporary_artifact_goes_with_its_with_block_or_its_object(tmp_path, capsys):
    proto = onnx.load(_onnx_file(tmp_path / "m.onnx"))
    with genzip.compile(proto, target="onnx", progress=True) as art:  # a tqdm bar (tqdm.auto)
        folder = art.folder
        assert "genzip writing onnx artifact" in capsys.readouterr().err
        assert os.path.isfile(os.path.join(folder, "genzip.json"))
    assert not os.path.exists(folder)
    messages = []
    art = genzip.compile(proto, target="onnx", progress=messages.append)
    assert messages[0] == "loading a ModelProto" and messages[-1].startswith("writing onnx artifact")
    with pytest.raises(GenzipError, match="evaluate a DiT or LLM artifact"):
        art.eval()  # genzip.runtime.evaluate's own refusal: this artifact is neither
    folder = art.folder
    del art
    gc.collect()
    assert not os.path.exists(folder)


def test_onnx_proto_and_ir_model_with_python_calibration(tmp_path):
    proto = onnx.load(_onnx_file(tmp_path / "m.onnx"))
    calib = [_feeds(2, seed) for seed in range(4)]
    art = genzip.compile(proto, _feeds(3), recipe="w8a8", calib_data=calib, target="onnx", out=str(tmp_path / "a"))
    assert not art.temporary and art.folder == str(tmp_path / "a")
    calibrate = next(r for r in art.manifest["pass_stats"] if r["pass"] == "calibrate")
    assert calibrate["stats"]["samples"] == 4 and art.manifest["quant_fidelity"]["cosine"] > 0.99
    art.close()
    assert os.path.isdir(tmp_path / "a")  # an artifact written to out is never removed

    def forward_loop(model):  # ModelOpt's shape
        for feeds in calib[:3]:
            model(**feeds)

    with genzip.compile(ir.from_proto(proto), recipe="w8a8", calib_data=forward_loop, target="onnx") as art:
        assert next(r for r in art.manifest["pass_stats"] if r["pass"] == "calibrate")["stats"]["samples"] == 3
    with pytest.raises(GenzipError, match="pass 'calibrate' needs calibration, which an in-memory ONNX model"):
        genzip.compile(proto, recipe="w8a8")


def test_transformers_object_with_a_calibration_generator():
    from tiny_llm import one_layer_llama

    model = one_layer_llama()
    rng = np.random.default_rng(0)

    def samples():
        for _ in range(3):
            yield {"input_ids": torch.from_numpy(rng.integers(0, 64, (1, 32)))}

    with genzip.compile(model, recipe="w8a8", calib_data=samples, target="onnx", min_cosine=0.9) as art:
        assert art.manifest["source_info"]["family"] == "llm"
        assert any(r["pass"].startswith("quant") and r["modified"] for r in art.manifest["pass_stats"])
        assert art.manifest["config"]["passes"] == "annotate-precision,calibrate,quant{scheme=w8a8}"


def test_diffusers_object_calibrates_on_its_own_trajectory():
    import diffusers

    torch.manual_seed(0)
    model = diffusers.PixArtTransformer2DModel(
        num_layers=1, num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
        patch_size=2, sample_size=4, cross_attention_dim=16, caption_channels=12,
        norm_type="ada_norm_single", use_additional_conditions=False,
    )
    with genzip.compile(model, recipe="w8a8", target="onnx", min_cosine=0.9) as art:
        calibrate = next(r for r in art.manifest["pass_stats"] if r["pass"] == "calibrate")
        assert calibrate["stats"]["samples"] == 8  # 2 trajectories x 4 steps, recorded by genzip
        assert [s["name"] for s in art.manifest["inputs"]] == ["hidden_states", "timestep", "encoder_hidden_states", "encoder_attention_mask"]


def test_every_cli_flag_has_a_keyword():
    """Derived from the parser and the settings, so a later flag is covered without editing this test."""
    from genzip.compile import option_keywords
    from genzip.tools.compile_cli import build_parser

    renamed = {"inputs": "example_inputs", "quiet": "progress"}  # Python spellings of two flags
    not_settings = {"help", "version", "debug"}  # Python raises; tracebacks are always there
    dests = {a.dest for a in build_parser()._actions} - not_settings
    keywords = option_keywords() | {"model"}
    missing = sorted(renamed.get(d, d) for d in dests if renamed.get(d, d) not in keywords)
    assert missing == []
    import dataclasses

    from genzip.compile import CompileOptions

    fields = {f.name for f in dataclasses.fields(CompileOptions)} - {"trt", "inputs"}
    assert fields <= {renamed.get(d, d) for d in dests} | {"inputs"}  # and every option has a flag


def test_unknown_keywords_and_models_are_one_line_errors():
    with pytest.raises(GenzipError, match=r"unknown keyword 'min_cosin' \(did you mean: min_cosine\?\)"):
        genzip.compile("tiny-llama", min_cosin=0.9)
    with pytest.raises(GenzipError, match=r"cannot compile a dict; pass a torch.nn.Module"):
        genzip.compile({"x": 1})
    with pytest.raises(GenzipError, match=r"key 'seed' is '3' \(str\), expected an integer") as info:
        genzip.compile("tiny-llama", seed="3")
    assert info.value.problem.startswith("genzip.compile key 'seed'") and info.value.fix == "fix the value of 'seed'"
    with pytest.raises(GenzipError, match="genzip cannot build example inputs for a _Net"):
        genzip.compile(_Net())


def test_compile_options_carry_inputs_and_calibration(tmp_path):
    from genzip.compile import CompileOptions, compile_model

    model = _onnx_file(tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", **_feeds(5, seed=4))  # samples on the batch axis
    feeds = _feeds(2, seed=9)
    opts = CompileOptions(target="onnx", passes="annotate-precision,calibrate,quant", inputs=feeds,
                          calib_data=str(tmp_path / "calib.npz"), min_cosine=0.9)
    manifest = compile_model(model, str(tmp_path / "a"), opts)
    assert next(r for r in manifest["pass_stats"] if r["pass"] == "calibrate")["stats"]["samples"] == 5
    with np.load(tmp_path / "a" / "inputs.npz") as saved:
        np.testing.assert_array_equal(saved["ids"], feeds["ids"])
