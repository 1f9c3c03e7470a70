"""--dynamic-axes keeps the caption, latent-size or sequence axis dynamic where the model and the
passes allow it: the artifact runs at other sizes in its range and matches PyTorch there, names
the range outside it, and axes that cannot stay dynamic are one-line errors (auto: static)."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import torch

import genzip
from genzip.backends.runner import check_inputs, load_artifact
from genzip.backends.trt_profiles import ShapeRange, resolve_profiles
from genzip.compile import CompileOptions, compile_model, compile_source, dynamic_request
from genzip.errors import GenzipError
from genzip.frontend import hf_inputs, load_model
from genzip.frontend.dynamic_axes import DynamicAxes, named_in, plan
from genzip.metrics import cosine
from genzip.passes import build_pipeline
from genzip.recipes import expand_recipe


@pytest.fixture(scope="module")
def text_pixart():
    """tiny-pixart (8 caption tokens) exported once with its caption axis dynamic."""
    return load_model("tiny-pixart", axes=DynamicAxes.parse("text"))


def _eager_and_call(module, text_len: int, seed: int):
    _, kwargs = hf_inputs.diffusers_call(module, batch=2, seed=seed, text_len=text_len)  # padded masks too
    with torch.no_grad():
        return module(**kwargs)[0], kwargs


def test_a_dynamic_caption_runs_at_other_lengths_and_matches_pytorch(text_pixart, tmp_path, capsys):
    assert text_pixart.info["dynamic_sizes"]["text_len"] == {
        "kind": "text", "min": 1, "opt": 8, "max": 512, "multiple": 1,
        "inputs": {"encoder_hidden_states": 1, "encoder_attention_mask": 1}}
    folder = str(tmp_path / "pixart.ort")
    manifest = compile_source(text_pixart.copy(), folder, CompileOptions(target="ort"))
    shapes = {s["name"]: s["shape"] for s in manifest["inputs"]}
    assert shapes["encoder_hidden_states"] == ["batch", "text_len", 32] and shapes["hidden_states"][2:] == [16, 16]
    assert manifest["source_info"]["dynamic_sizes"]["text_len"]["max"] == 512
    transformer, module = genzip.load(folder), text_pixart.info["module"]
    assert transformer.config["sample_size"] == 16
    for text_len in (3, 13):  # neither is the traced 8
        expected, kw = _eager_and_call(module, text_len, seed=text_len)
        got = transformer(kw["hidden_states"], encoder_hidden_states=kw["encoder_hidden_states"],
                          encoder_attention_mask=kw["encoder_attention_mask"], timestep=kw["timestep"],
                          return_dict=False)[0]
        assert torch.allclose(got, expected, atol=1e-4), text_len
    _, kw = _eager_and_call(module, 600, seed=0)
    with pytest.raises(GenzipError, match="has text_len 600 .* this artifact takes text_len 1..512"):
        transformer(kw["hidden_states"], encoder_hidden_states=kw["encoder_hidden_states"], timestep=kw["timestep"],
                    return_dict=False)
    np.savez(tmp_path / "long.npz", **{k: v.numpy() for k, v in kw.items() if isinstance(v, torch.Tensor)})
    from genzip.tools import genzip_cli

    assert genzip_cli.main(["run", folder, "--inputs", str(tmp_path / "long.npz")]) == 2
    assert "text_len 1..512" in capsys.readouterr().err


def test_w8a8_calibrates_and_quantizes_a_dynamic_caption_model(text_pixart, tmp_path):
    """Calibration and fidelity run at the traced size; the quantized graph still takes any length."""
    folder = str(tmp_path / "w8a8.ort")
    manifest = compile_source(text_pixart.copy(), folder, CompileOptions(target="onnx",
                                                                        passes=expand_recipe("w8a8")))
    assert [r["modified"] for r in manifest["pass_stats"]] == [True, True, True]
    assert manifest["fidelity"]["cosine"] > 0.99
    assert manifest["inputs"][2]["shape"] == ["batch", "text_len", 32]
    model = load_artifact(folder)
    expected, kw = _eager_and_call(text_pixart.info["module"], 5, seed=1)
    got = model.run({k: v.numpy() for k, v in kw.items() if isinstance(v, torch.Tensor)})["output"]
    assert cosine(got, expected.numpy()) > 0.99


def test_an_llm_folder_runs_at_other_sequence_lengths(tmp_path):
    from tests.tiny_llm import make_folder

    folder = make_folder(tmp_path)
    source = load_model(str(folder), axes=DynamicAxes.parse("seq=1:40"))
    assert source.info["dynamic_sizes"]["seq_len"]["max"] == 40
    out = str(tmp_path / "llm.onnx")
    compile_source(source, out, CompileOptions(target="onnx"))
    model, module = load_artifact(out), source.info["module"]
    for batch, seq in ((2, 5), (1, 20)):  # batch 2: the rotary caches follow the batch (frontend/rotary_batch.py)
        ids = torch.randint(0, 20, (batch, seq), generator=torch.Generator().manual_seed(seq))
        with torch.no_grad():
            expected = module(input_ids=ids, use_cache=False).logits.numpy()
        np.testing.assert_allclose(model.run({"input_ids": ids.numpy()})["logits"], expected, atol=1e-4)
    with pytest.raises(GenzipError, match="seq_len 41 .* takes seq_len 1..40"):
        model.run({"input_ids": np.zeros((1, 41), np.int64)})


def test_a_pass_that_needs_a_static_axis_is_refused_before_export(tmp_path, monkeypatch):
    from genzip.frontend import presets

    monkeypatch.setattr(presets, "load_preset", lambda *a, **k: pytest.fail("exported before the check"))
    opts = CompileOptions(passes="canonicalize-attn,window-attn", dynamic_axes="text,size")
    with pytest.raises(GenzipError, match="pass 'window-attn' needs the latent height/width \\(size\\) static .*"
                                          "drop size from --dynamic-axes"):
        compile_model("tiny-pixart", str(tmp_path / "a"), opts)
    passes = build_pipeline("canonicalize-attn,window-attn").passes
    assert dynamic_request("auto", passes).kinds() == ("text",)  # auto keeps size (and seq) static
    assert dynamic_request("auto", build_pipeline("canonicalize-attn,span-attn{alpha=8 beta=0.25}").passes).kinds() == ("text", "size")
    assert dynamic_request("text", passes).kinds() == ("text",)  # the caption axis is no self-attention's


def test_auto_keeps_the_axes_the_export_refuses_static(monkeypatch):
    """auto drops the kinds that failed and exports again; an explicit list names them in one line."""
    from genzip.frontend import from_torch

    tried = []

    def fake(module, call, batch, names, what, axes=()):
        tried.append(sorted({a.kind for a in axes}))
        if any(a.kind == "size" for a in axes):
            raise from_torch.AxesRefused({"size"}, "Constraints violated (height, width)")
        return "exported"

    monkeypatch.setattr(from_torch, "_try_dynamic", fake)
    module = types.SimpleNamespace(config={"patch_size": 1})
    shapes = {"hidden_states": (2, 4, 16, 16), "encoder_hidden_states": (2, 8, 32)}
    axes = plan(DynamicAxes.parse("auto"), module, shapes, "'m'")
    result, kept = from_torch._export_with_axes(None, None, 2, ["out"], "'m'", DynamicAxes.parse("auto"), axes)
    assert result == "exported" and [a.dim for a in kept] == ["text_len"] and tried == [["size", "text"], ["text"]]
    explicit = DynamicAxes.parse("text,size")
    with pytest.raises(GenzipError, match="--dynamic-axes size: 'm' cannot keep its latent height/width \\(size\\) "
                                          "dynamic: Constraints violated \\(height, width\\); drop size"):
        from_torch._export_with_axes(None, None, 2, ["out"], "'m'", explicit, plan(explicit, module, shapes, "'m'"))
    assert named_in(RuntimeError("Constraints violated (height, width)! For more"), axes) == {"size"}


def test_a_batch_that_cannot_be_dynamic_is_named(monkeypatch):
    """A UNet2DConditionModel's batch is not dynamic (torch.export: "Constraints violated (batch)"), and the
    sizes go with a dynamic batch: the error says so rather than blaming the axis."""
    from genzip.frontend import from_torch

    def refuse(*args, **kwargs):
        raise RuntimeError("Constraints violated (batch)! For more information, run with TORCH_LOGS")

    monkeypatch.setattr(from_torch, "export_onnx", refuse)
    module = types.SimpleNamespace(config={})
    axes = plan(DynamicAxes.parse("text"), module, {"encoder_hidden_states": (2, 8, 32)}, "'m'")
    with pytest.raises(from_torch.AxesRefused) as refused:
        from_torch._try_dynamic(module, ((), {"x": torch.zeros(2, 3)}), 2, ["out"], "'m'", axes)
    assert refused.value.kinds == {"text"} and refused.value.reason == (
        "its batch axis cannot be dynamic (Constraints violated (batch)), and dynamic sizes go with a dynamic batch")


@pytest.mark.parametrize("spec, shapes, config, message", [
    ("txt", {}, {}, "'txt' is not an axis kind"),
    ("text=0:4", {}, {}, "needs 1 <= MIN <= MAX"),
    ("text,text", {}, {}, "names text twice"),
    ("text", {"hidden_states": (2, 4, 16, 16)}, {}, "has no caption length axis"),
    ("text=10:20", {"encoder_hidden_states": (2, 8, 32)}, {}, "does not include the traced text_len 8"),
    ("size=3:17", {"hidden_states": (2, 4, 16, 16)}, {"patch_size": 2}, "multiple of 2 .* pass size=4:16"),
])
def test_bad_requests_are_one_line_errors(spec, shapes, config, message):
    with pytest.raises(GenzipError, match=message):
        plan(DynamicAxes.parse(spec), types.SimpleNamespace(config=config), shapes, "'m'")


def test_default_ranges_follow_the_model():
    llm = types.SimpleNamespace(config={"max_position_embeddings": 48})
    (seq,) = plan(DynamicAxes.parse("seq"), llm, {"input_ids": (1, 32)}, "'m'")
    assert (seq.min, seq.opt, seq.max, seq.other()) == (1, 32, 48, 16)
    sd3 = types.SimpleNamespace(config={"patch_size": 2, "pos_embed_max_size": 24})
    h, w = plan(DynamicAxes.parse("size"), sd3, {"hidden_states": (2, 4, 16, 12)}, "'m'")
    assert (h.dim, h.min, h.opt, h.max, h.multiple, h.other()) == ("height", 2, 16, 48, 2, 8)
    assert (w.dim, w.opt, w.other()) == ("width", 12, 6)


def test_fixed_shape_sources_refuse_an_explicit_request(tmp_path):
    from tests.helpers_onnx import save_static_relu

    path = save_static_relu(tmp_path / "m.onnx")
    with pytest.raises(GenzipError, match="--dynamic-axes text cannot apply to an ONNX file"):
        load_model(str(path), axes=DynamicAxes.parse("text"))
    assert load_model(str(path), axes=DynamicAxes.parse("auto")).model is not None  # auto asks nothing of it


def test_tensorrt_profiles_take_min_and_max_from_the_range():
    inputs = [{"name": "encoder_hidden_states", "shape": ["batch", "text_len", 32], "dtype": "float32"}]
    ranges = {"text_len": {"min": 1, "opt": 8, "max": 120}}
    (profile,) = resolve_profiles([], inputs, {"encoder_hidden_states": (2, 8, 32)}, ranges)
    assert profile["encoder_hidden_states"] == ShapeRange((1, 1, 32), (2, 8, 32), (4, 120, 32))


def test_the_input_check_names_the_range_and_the_patch_multiple():
    specs = [{"name": "hidden_states", "shape": ["batch", 4, "height", "width"], "dtype": "float32"}]
    ranges = {d: {"min": 2, "opt": 16, "max": 32, "multiple": 2} for d in ("height", "width")}
    check_inputs({"hidden_states": np.zeros((1, 4, 8, 30), np.float32)}, specs, ranges)
    with pytest.raises(GenzipError, match="has width 31 .* takes width 2..32 in multiples of 2"):
        check_inputs({"hidden_states": np.zeros((1, 4, 8, 31), np.float32)}, specs, ranges)


def test_the_setting_is_a_flag_a_keyword_and_recorded(tmp_path):
    from genzip.compile import build_compile, resolve_settings

    resolved = build_compile(resolve_settings(None, {"model": "tiny-pixart", "dynamic_axes": "text=1:77"}))
    assert resolved.options.dynamic_axes == "text=1:77" and resolved.record["dynamic_axes"] == "text=1:77"
    with pytest.raises(GenzipError, match="not a MIN:MAX range"):
        build_compile(resolve_settings(None, {"model": "tiny-pixart", "dynamic_axes": "text=1"}))
    from genzip.tools.compile_cli import explicit_settings

    assert explicit_settings(["tiny-pixart", "--dynamic-axes", "auto"])["dynamic_axes"] == "auto"
    assert json.loads(json.dumps(resolved.record))["dynamic_axes"] == "text=1:77"


def test_a_whole_pipeline_refuses_dynamic_axes(tmp_path):
    from genzip.pipeline import compile_pipeline

    folder = tmp_path / "dit-pipeline"
    for part in ("transformer", "vae", "scheduler"):
        (folder / part).mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "DiTPipeline"}))
    with pytest.raises(GenzipError, match="--dynamic-axes cannot apply to a whole DiTPipeline folder; compile its "
                                          "transformer folder alone"):
        compile_pipeline(str(folder), str(tmp_path / "out"), CompileOptions(dynamic_axes="auto"))
