"""The diffusers adapter and `genzip run` name the sizes an artifact accepts instead of ORT's
raw 'Got invalid dimensions', and the adapter refuses a padded-prompt mask it would ignore."""

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


def test_padded_prompt_mask_is_refused(pixart_ort):
    transformer = genzip.load(pixart_ort[0])
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
