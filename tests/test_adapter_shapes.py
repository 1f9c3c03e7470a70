"""The diffusers adapter and `genzip run` name the sizes an artifact accepts instead of ORT's
raw 'Got invalid dimensions'; padded prompts match PyTorch through the export's mask input, and an
artifact without one refuses a padded-prompt mask it would ignore."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import genzip
from genzip.errors import GenzipError
from genzip.tools import genzip_cli


def _call_args(transformer, text_len=None):
    spec = {s["name"]: s["shape"] for s in transformer.manifest["inputs"]}
    _, channels, height, width = spec["hidden_states"]
    _, tokens, dim = spec["encoder_hidden_states"]
    latents = torch.zeros(1, channels, height, width)
    text = torch.zeros(1, text_len or tokens, dim)
    return latents, text, tokens


def _eager_tiny_pixart():
    """The module of the pixart_ort fixture (tiny-pixart, seed 0), as load_preset builds it."""
    from genzip.frontend.presets import _build_module, get_preset

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return _build_module(get_preset("tiny-pixart")).eval()


def test_padded_prompts_match_pytorch(pixart_ort):
    """The export has an encoder_attention_mask input; a padded prompt's output matches eager
    PixArt with the same mask, and differs from the unpadded one (the mask matters)."""
    transformer = genzip.load(pixart_ort[0])
    assert any(s["name"] == "encoder_attention_mask" and s["dtype"] == "int64" for s in transformer.manifest["inputs"])
    canonical = transformer.manifest["pass_stats"][0]
    assert canonical["pass"] == "canonicalize-attn" and canonical["stats"]["cross"] == 2  # masked, still recognized
    _, tokens, dim = next(s["shape"] for s in transformer.manifest["inputs"] if s["name"] == "encoder_hidden_states")
    g = torch.Generator().manual_seed(5)
    latents, text = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, tokens, dim, generator=g)
    mask = torch.ones(2, tokens, dtype=torch.int64)
    mask[1, tokens // 2:] = 0  # the second prompt is padded
    t = torch.tensor([500.0, 500.0])
    got = transformer(latents, encoder_hidden_states=text, encoder_attention_mask=mask, timestep=t,
                      return_dict=False)[0]
    with torch.no_grad():
        want = _eager_tiny_pixart()(latents, encoder_hidden_states=text, encoder_attention_mask=mask, timestep=t,
                                    return_dict=False)[0]
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    unmasked = transformer(latents, encoder_hidden_states=text, timestep=t, return_dict=False)[0]
    assert torch.allclose(unmasked[0], got[0], atol=1e-5) and (unmasked[1] - got[1]).abs().max() > 1e-3


def test_a_padded_mask_is_refused_by_an_artifact_without_the_input(pixart_ort):
    transformer = genzip.load(pixart_ort[0])
    transformer.has_mask = False  # as for an artifact exported before the mask input, or from a maskless forward
    latents, text, tokens = _call_args(transformer)
    ones = torch.ones(1, tokens)
    out = transformer(latents, encoder_hidden_states=text, encoder_attention_mask=ones, timestep=torch.tensor([500]),
                      return_dict=False)[0]
    assert out.shape[0] == 1  # an all-ones mask is what the graph computes anyway
    padded = ones.clone()
    padded[:, tokens // 2:] = 0
    with pytest.raises(GenzipError, match="takes no encoder_attention_mask .* mask given has zeros"):
        transformer(latents, encoder_hidden_states=text, encoder_attention_mask=padded, timestep=torch.tensor([500]),
                    return_dict=False)


def test_wrong_text_length_names_the_accepted_shape(pixart_ort):
    transformer = genzip.load(pixart_ort[0])
    latents, text, tokens = _call_args(transformer, text_len=120)
    with pytest.raises(GenzipError) as err:
        transformer(latents, encoder_hidden_states=text, timestep=torch.tensor([500]), return_dict=False)
    text_err = str(err.value)
    assert "encoder_hidden_states" in text_err and f", {tokens}," in text_err and "ONNXRuntimeError" not in text_err


def test_genzip_run_wrong_shape_is_one_line(pixart_ort, tmp_path, capsys):
    folder = pixart_ort[0]
    feeds = dict(np.load(f"{folder}/inputs.npz"))
    feeds["hidden_states"] = np.zeros((1, 4, 24, 24), np.float32)  # another resolution
    path = tmp_path / "bad.npz"
    np.savez(path, **feeds)
    rc = genzip_cli.main(["run", folder, "--inputs", str(path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "hidden_states" in err and "expected" in err
