"""A tiny random StableDiffusionXLImg2ImgPipeline (CLIPTextModel and CLIPTextModelWithProjection,
UNet with SDXL's text_time added conditions, VAE and its encoder, Euler; built offline) compiles
into one artifact; load_pipeline returns it on ONNX Runtime, and its images (img2img, and
text-to-image through StableDiffusionXLPipeline(**components)) match PyTorch's at the same seed;
the UNet adapter refuses added conditions the export lacks."""

from __future__ import annotations

import json
import os

import pytest
import torch

from genzip.errors import GenzipError
from genzip.tools import compile_cli
from tests.tiny_pipelines import assert_img2img_and_text_match, stable_diffusion_xl


@pytest.fixture(scope="module")
def sdxl_pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("sdxl")
    folder, out = root / "sdxl-pipe", root / "artifact"
    stable_diffusion_xl(folder, img2img=True)
    assert compile_cli.main([str(folder), "--out", str(out), "--quiet"]) == 0
    return str(folder), str(out)


def test_sdxl_images_match_pytorch(sdxl_pipeline):
    import diffusers

    folder, out = sdxl_pipeline
    with open(os.path.join(out, "genzip.json")) as f:
        manifest = json.load(f)
    assert sorted(manifest["components"]) == ["text_encoder", "text_encoder_2", "unet", "vae_decoder", "vae_encoder"]
    assert manifest["pipeline_options"] == {"force_zeros_for_empty_prompt": True, "requires_aesthetics_score": False}
    with open(os.path.join(out, "unet", "genzip.json")) as f:
        inputs = {s["name"]: s["shape"] for s in json.load(f)["inputs"]}
    # both CLIPs' penultimate states concatenated (8 + 8); the pooled projection and 6 time ids
    assert inputs["encoder_hidden_states"][1:] == [77, 16] and inputs["text_embeds"][1:] == [8]
    assert inputs["time_ids"][1:] == [6]
    # Text: three prompts with CFG, a UNet batch of 6 in static slices of 2, added conditions sliced alike
    pipe = assert_img2img_and_text_match(
        out, folder, diffusers.StableDiffusionXLImg2ImgPipeline, diffusers.StableDiffusionXLPipeline,
        img2img_prompts=["a red cat", "blue"],
        text_call=dict(prompt=["a red cat", "a photo of the dog", "blue"], negative_prompt=["dog", "", "red"],
                       num_inference_steps=2))
    latents = torch.zeros(2, 4, 8, 8)
    with pytest.raises(GenzipError, match="takes added_cond_kwargs text_embeds, time_ids, which were not passed"):
        pipe.unet(latents, 1.0, encoder_hidden_states=torch.zeros(2, 77, 16))
    with pytest.raises(GenzipError, match=r"exported without added_cond_kwargs\['image_embeds'\]"):
        pipe.unet(latents, 1.0, encoder_hidden_states=torch.zeros(2, 77, 16),
                  added_cond_kwargs={"text_embeds": torch.zeros(2, 8), "time_ids": torch.zeros(2, 6),
                                     "image_embeds": torch.zeros(2, 8)})
