"""--text-len, --height/--width (--sample-size) and --seq-len set the export's non-batch sizes;
sizes a model cannot take are one-line errors before any export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import genzip
from genzip.errors import GenzipError
from genzip.frontend import load_model
from genzip.frontend.export_sizes import ExportSizes
from genzip.tools import compile_cli


@pytest.fixture(scope="module")
def sized_pixart(tmp_path_factory):
    """tiny-pixart (8 caption tokens, 16x16 latents by default) exported at 12 tokens, 8x12 latents."""
    folder = str(tmp_path_factory.mktemp("sized") / "pixart")
    rc = compile_cli.main(["tiny-pixart", "--out", folder, "--text-len", "12", "--height", "8", "--width", "12",
                           "--target", "onnx", "--quiet"])
    assert rc == 0
    with open(f"{folder}/genzip.json") as f:
        return folder, json.load(f)


def test_a_preset_exported_at_other_sizes_runs_there(sized_pixart):
    folder, manifest = sized_pixart
    shapes = {s["name"]: s["shape"] for s in manifest["inputs"]}
    assert shapes["hidden_states"][1:] == [4, 8, 12] and shapes["encoder_hidden_states"][1:] == [12, 32]
    assert manifest["config"]["text_len"] == 12 and manifest["config"]["height"] == 8
    assert manifest["fidelity"]["cosine"] > 0.999  # vs eager PyTorch at those sizes
    transformer = genzip.load(folder)
    assert transformer.config["sample_size"] == 8  # the export's, not the preset's 16
    g = torch.Generator().manual_seed(3)
    latents, text = torch.randn(2, 4, 8, 12, generator=g), torch.randn(2, 12, 32, generator=g)
    out = transformer(latents, encoder_hidden_states=text, timestep=torch.tensor([500.0, 500.0]), return_dict=False)[0]
    assert out.shape == (2, 8, 8, 12) and torch.isfinite(out).all()
    with pytest.raises(GenzipError, match="encoder_hidden_states"):  # the default 8 tokens are not this artifact's
        transformer(latents, encoder_hidden_states=text[:, :8], timestep=torch.tensor([500.0]), return_dict=False)


class _Traced(Exception):
    pass


def test_an_llm_folder_is_traced_at_another_sequence_length(tmp_path, monkeypatch):
    """The call handed to the exporter has --seq-len tokens (the export itself is the one every
    folder gets, tested in test_frontend_hf_folders.py; skipped here to keep this fast)."""
    from genzip.frontend import from_torch
    from tests.tiny_llm import make_folder

    def traced(module, call, **kwargs):
        raise _Traced(call[1]["input_ids"].shape, kwargs["info"]["export_sizes"])

    monkeypatch.setattr(from_torch, "source_from_torch", traced)
    folder = make_folder(tmp_path)
    with pytest.raises(_Traced) as got:
        load_model(str(folder), sizes=ExportSizes(seq_len=12))
    assert got.value.args == ((1, 12), {"seq_len": 12})
    with pytest.raises(GenzipError, match="--seq-len 49 is over LlamaForCausalLM's max_position_embeddings \\(48\\)"):
        load_model(str(folder), sizes=ExportSizes(seq_len=49))


@pytest.mark.parametrize("ref, flags, message", [
    ("tiny-dit", ["--height", "7"], "--height 7 is not a multiple of 2, the DiTTransformer2DModel's patch size; "
                                    "pass --height 6 or 8"),
    ("tiny-dit", ["--text-len", "16"], "takes no encoder_hidden_states"),
    ("tiny-pixart", ["--seq-len", "16"], "--seq-len applies to language models"),
    ("tiny-llama", ["--seq-len", "999"], "over LlamaForCausalLM's max_position_embeddings \\(128\\)"),
    ("tiny-llama", ["--height", "8"], "--height apply to denoisers"),
    ("tiny-pixart", ["--sample-size", "8", "--width", "8"], "--sample-size sets both"),
    ("tiny-pixart", ["--text-len", "0"], "--text-len must be a positive integer"),
])
def test_sizes_a_model_cannot_take_are_one_line_errors(ref, flags, message, tmp_path, capsys):
    rc = compile_cli.main([ref, "--out", str(tmp_path / "a"), "--quiet", *flags])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert __import__("re").search(message, err), err
    assert not (tmp_path / "a").exists()


def test_sizes_for_fixed_shape_sources_are_refused(tmp_path):
    from tests.helpers_onnx import save_static_relu

    path = save_static_relu(tmp_path / "m.onnx")
    with pytest.raises(GenzipError, match="--text-len cannot apply to an ONNX file"):
        load_model(str(path), sizes=ExportSizes(text_len=4))
    np.savez(tmp_path / "in.npz", x=np.ones((1, 4), np.float32))
    with pytest.raises(GenzipError, match="--seq-len and --inputs both set"):
        genzip.compile("tiny-llama", str(tmp_path / "in.npz"), seq_len=8)


def test_a_callable_gets_the_sizes_it_takes(tmp_path, monkeypatch):
    (tmp_path / "sized_user_model.py").write_text(
        "import torch\n"
        "def build(seq_len=4):\n"
        "    return torch.nn.Linear(3, 2), (torch.randn(2, seq_len, 3),)\n"
        "def fixed():\n"
        "    return torch.nn.Linear(3, 2), (torch.randn(2, 4, 3),)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_model("sized_user_model:build", sizes=ExportSizes(seq_len=6)).example_inputs["input"].shape[1] == 6
    with pytest.raises(GenzipError, match="takes no 'seq_len' parameter, so --seq-len 6"):
        load_model("sized_user_model:fixed", sizes=ExportSizes(seq_len=6))


def test_an_in_memory_denoiser_is_traced_at_the_sizes_given(monkeypatch):
    """genzip.compile(dit, text_len=..., height=..., width=...): load_object builds its call at them."""
    from genzip.frontend import from_torch
    from genzip.frontend.loader import load_object
    from genzip.frontend.presets import _build_module, get_preset

    def traced(module, call, **kwargs):
        kw = call[1]
        raise _Traced(kw["hidden_states"].shape, kw["encoder_hidden_states"].shape,
                      kw["encoder_attention_mask"].shape, kwargs["info"]["export_sizes"])

    monkeypatch.setattr(from_torch, "source_from_torch", traced)
    dit = _build_module(get_preset("tiny-pixart"))
    with pytest.raises(_Traced) as got:
        load_object(dit, sizes=ExportSizes.from_settings(text_len=5, sample_size=8))
    assert got.value.args == ((2, 4, 8, 8), (2, 5, 32), (2, 5), {"text_len": 5, "height": 8, "width": 8})
    with pytest.raises(GenzipError, match="example_inputs"):
        load_object(dit, (torch.zeros(2, 4, 8, 8),), sizes=ExportSizes(height=8))
