"""A tiny random StableDiffusionXLPipeline (CLIPTextModel and CLIPTextModelWithProjection, UNet with
SDXL's text_time added conditions, VAE, Euler; built offline) compiles into one artifact;
load_pipeline returns a StableDiffusionXLPipeline on ONNX Runtime whose images match PyTorch's
at the same seed; the UNet adapter refuses added conditions the export lacks."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import genzip
from genzip.errors import GenzipError
from genzip.tools import compile_cli
from tests.tiny_pipelines import stable_diffusion_xl


@pytest.fixture(scope="module")
def sdxl_pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("sdxl")
    folder, out = root / "sdxl-pipe", root / "artifact"
    stable_diffusion_xl(folder)
    assert compile_cli.main([str(folder), "--out", str(out), "--quiet"]) == 0
    return str(folder), str(out)


def test_sdxl_images_match_pytorch(sdxl_pipeline):
    import diffusers

    folder, out = sdxl_pipeline
    with open(os.path.join(out, "genzip.json")) as f:
        manifest = json.load(f)
    assert sorted(manifest["components"]) == ["text_encoder", "text_encoder_2", "unet", "vae_decoder"]
    assert manifest["pipeline_options"] == {"force_zeros_for_empty_prompt": True}
    with open(os.path.join(out, "unet", "genzip.json")) as f:
        inputs = {s["name"]: s["shape"] for s in json.load(f)["inputs"]}
    # both CLIPs' penultimate states concatenated (8 + 8); the pooled projection and 6 time ids
    assert inputs["encoder_hidden_states"][1:] == [77, 16] and inputs["text_embeds"][1:] == [8]
    assert inputs["time_ids"][1:] == [6]
    pipe = genzip.load_pipeline(out, providers="cpu")
    assert isinstance(pipe, diffusers.StableDiffusionXLPipeline)
    reference = diffusers.StableDiffusionXLPipeline.from_pretrained(folder)
    for p in (pipe, reference):
        p.set_progress_bar_config(disable=True)
    # Three prompts with CFG: a UNet batch of 6 in static slices of 2, added conditions sliced alike
    call = dict(prompt=["a red cat", "a photo of the dog", "blue"], negative_prompt=["dog", "", "red"],
                num_inference_steps=2, output_type="np")
    got, want = (p(generator=torch.manual_seed(0), **call).images for p in (pipe, reference))
    assert got.shape == want.shape == (3, 16, 16, 3)
    assert np.abs(got - want).max() < 1e-3 and want.std() > 0.05
    latents = torch.zeros(2, 4, 8, 8)
    with pytest.raises(GenzipError, match="takes added_cond_kwargs text_embeds, time_ids, which were not passed"):
        pipe.unet(latents, 1.0, encoder_hidden_states=torch.zeros(2, 77, 16))
    with pytest.raises(GenzipError, match=r"exported without added_cond_kwargs\['image_embeds'\]"):
        pipe.unet(latents, 1.0, encoder_hidden_states=torch.zeros(2, 77, 16),
                  added_cond_kwargs={"text_embeds": torch.zeros(2, 8), "time_ids": torch.zeros(2, 6),
                                     "image_embeds": torch.zeros(2, 8)})
