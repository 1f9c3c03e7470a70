"""A tiny random StableDiffusion3Img2ImgPipeline (two projection CLIPs, T5, SD3 transformer with
joint attention and pooled projections, VAE with a shift factor and its encoder, flow-matching
Euler; built offline) compiles into one artifact; load_pipeline returns it on ONNX Runtime, and
its images (img2img, and text-to-image through StableDiffusion3Pipeline(**components)) match
PyTorch's at the same seed; clip_skip (a hidden state the export lacks) is a one-line error;
genzip sample writes PNGs from noise and from --image."""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import pytest

from genzip.errors import GenzipError
from genzip.tools import compile_cli, genzip_cli
from tests.tiny_pipelines import assert_img2img_and_text_match, stable_diffusion_3

PROMPTS = ["a red cat", "a photo of the dog", "blue"]


@pytest.fixture(scope="module")
def sd3_pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd3")
    folder, out = root / "sd3-pipe", root / "artifact"
    stable_diffusion_3(folder, img2img=True)
    assert compile_cli.main([str(folder), "--out", str(out), "--passes", "canonicalize-attn,share-attn",
                             "--passes", "text_encoder_3=dce", "--quiet"]) == 0
    return str(folder), str(out)


def test_sd3_components_and_manifest(sd3_pipeline):
    _, out = sd3_pipeline
    with open(os.path.join(out, "genzip.json")) as f:
        manifest = json.load(f)
    assert manifest["pipeline"] == "StableDiffusion3Img2ImgPipeline"
    assert sorted(manifest["components"]) == ["text_encoder", "text_encoder_2", "text_encoder_3", "transformer",
                                              "vae_decoder", "vae_encoder"]
    assert manifest["passes"]["text_encoder_3"] == "dce" and manifest["passes"]["text_encoder"] == ""
    assert manifest["passes"]["transformer"] == "canonicalize-attn,share-attn"
    from genzip.compile import build_compile, resolve_settings

    rebuild = build_compile(resolve_settings(os.path.join(out, "genzip.json")))  # --config ARTIFACT/genzip.json
    assert rebuild.component_passes == {"text_encoder_3": "dce"}  # a component name with a digit
    assert manifest["vae"] == {"scaling_factor": 1.5305, "shift_factor": 0.0609}
    assert sorted(manifest["tokenizers"]) == ["tokenizer", "tokenizer_2", "tokenizer_3"]
    for part in manifest["components"]:
        assert manifest["fidelity"][part]["cosine"] > 0.999
    with open(os.path.join(out, "transformer", "genzip.json")) as f:
        inputs = {s["name"]: s["shape"] for s in json.load(f)["inputs"]}
    # 77 CLIP tokens then 256 T5 tokens, as the pipeline concatenates them; the pooled CLIP projections
    assert inputs["encoder_hidden_states"] == ["batch", 77 + 256, 16] and inputs["pooled_projections"] == ["batch", 16]
    with open(os.path.join(out, "text_encoder", "genzip.json")) as f:
        outputs = [s["shape"] for s in json.load(f)["outputs"]]
    assert outputs == [["batch", 8], ["batch", 77, 8]]  # pooled text_embeds, penultimate hidden state


def test_sd3_load_pipeline_images_match_pytorch(sd3_pipeline):
    import diffusers

    folder, out = sd3_pipeline
    # img2img: the VAE encoder's distribution sampled with the same generator, shifted and scaled;
    # text: three prompts with CFG, a transformer batch of 6
    pipe = assert_img2img_and_text_match(
        out, folder, diffusers.StableDiffusion3Img2ImgPipeline, diffusers.StableDiffusion3Pipeline,
        img2img_prompts=PROMPTS[:2], text_call=dict(prompt=PROMPTS, num_inference_steps=2))
    with pytest.raises(GenzipError, match="penultimate hidden state only"):
        pipe(prompt=PROMPTS[0], num_inference_steps=1, clip_skip=1)


def test_sd3_attention_sharing_plan(sd3_pipeline, tmp_path):
    """share-attn takes SD3's joint attention as an attention-only block: an all-full plan is the
    plain pipeline, and a plan that reuses step 0's attention changes the images a little."""
    import diffusers
    import torch

    import genzip

    _, out = sd3_pipeline
    with open(os.path.join(out, "transformer", "genzip.json")) as f:
        stats = json.load(f)["pass_stats"][1]["stats"]
    assert (stats["layers"], stats["attention_only"]) == (1, 1)

    def images(plan):
        pipe = genzip.load_pipeline(out, plan=plan, providers="cpu")
        text = diffusers.StableDiffusion3Pipeline(**pipe.components)
        text.set_progress_bar_config(disable=True)
        return text(prompt=PROMPTS[:2], num_inference_steps=3, generator=torch.manual_seed(0), output_type="np").images

    def plan(methods):
        path = tmp_path / f"{'-'.join(methods)}.json"
        path.write_text(json.dumps({"schema": 1, "steps": 3, "layers": 1, "window": 8, "methods": [methods]}))
        return str(path)

    plain = images(None)
    assert np.array_equal(images(plan(["full", "full", "full"])), plain)
    shared = images(plan(["full", "share-step", "share-step"]))
    assert 0 < np.abs(shared - plain).max() < 0.05


def test_sd3_sample_writes_pngs(sd3_pipeline, tmp_path, capsys):
    from PIL import Image

    _, out = sd3_pipeline
    noise, edited = tmp_path / "sd3.png", tmp_path / "edited.png"
    assert genzip_cli.main(["sample", out, "--prompt", PROMPTS[0], "--steps", "2", "--out", str(noise),
                            "--quiet"]) == 0
    assert genzip_cli.main(["sample", out, "--image", str(noise), "--prompt", PROMPTS[1], "--steps", "2",
                            "--out", str(edited), "--quiet"]) == 0
    capsys.readouterr()
    assert Image.open(noise).size == Image.open(edited).size == (16, 16)


def test_image_needs_a_vae_encoder():
    from genzip.tools.sample_pipeline import input_image

    args = argparse.Namespace(image="in.png", strength=None)
    manifest = {"pipeline": "StableDiffusion3Pipeline", "components": {"transformer": "transformer"}}
    with pytest.raises(GenzipError, match="--image needs an image pipeline artifact"):
        input_image(args, manifest, "art")
