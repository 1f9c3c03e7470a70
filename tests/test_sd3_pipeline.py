"""A tiny random StableDiffusion3Pipeline (two projection CLIPs, T5, SD3 transformer with joint
attention and pooled projections, VAE with a shift factor, flow-matching Euler; built offline)
compiles into one artifact; load_pipeline returns a StableDiffusion3Pipeline on ONNX Runtime
whose images match PyTorch's at the same seed; clip_skip (a hidden state the export lacks) is a
one-line error; genzip sample writes a PNG and refuses --image (no VAE encoder)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import genzip
from genzip.errors import GenzipError
from genzip.tools import compile_cli, genzip_cli
from tests.tiny_pipelines import stable_diffusion_3

PROMPTS = ["a red cat", "a photo of the dog", "blue"]


@pytest.fixture(scope="module")
def sd3_pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd3")
    folder, out = root / "sd3-pipe", root / "artifact"
    stable_diffusion_3(folder)
    assert compile_cli.main([str(folder), "--out", str(out), "--passes", "text_encoder_3=dce", "--quiet"]) == 0
    return str(folder), str(out)


def test_sd3_components_and_manifest(sd3_pipeline):
    _, out = sd3_pipeline
    with open(os.path.join(out, "genzip.json")) as f:
        manifest = json.load(f)
    assert manifest["pipeline"] == "StableDiffusion3Pipeline"
    assert sorted(manifest["components"]) == ["text_encoder", "text_encoder_2", "text_encoder_3", "transformer",
                                              "vae_decoder"]
    assert manifest["passes"]["text_encoder_3"] == "dce" and manifest["passes"]["text_encoder"] == ""
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
    pipe = genzip.load_pipeline(out, providers="cpu")
    assert isinstance(pipe, diffusers.StableDiffusion3Pipeline)
    reference = diffusers.StableDiffusion3Pipeline.from_pretrained(folder)
    for p in (pipe, reference):
        p.set_progress_bar_config(disable=True)
    call = dict(prompt=PROMPTS, num_inference_steps=2, output_type="np")  # CFG: a batch of 6
    got, want = (p(generator=torch.manual_seed(0), **call).images for p in (pipe, reference))
    assert got.shape == want.shape == (3, 16, 16, 3)
    assert np.abs(got - want).max() < 1e-3 and want.std() > 0.05
    with pytest.raises(GenzipError, match="penultimate hidden state only"):
        pipe(prompt=PROMPTS[0], num_inference_steps=1, clip_skip=1)


def test_sd3_sample_writes_png(sd3_pipeline, tmp_path, capsys):
    _, out = sd3_pipeline
    image = tmp_path / "sd3.png"
    assert genzip_cli.main(["sample", out, "--prompt", PROMPTS[0], "--steps", "1", "--out", str(image),
                            "--quiet"]) == 0
    capsys.readouterr()
    from PIL import Image

    assert Image.open(image).size == (16, 16)
    assert genzip_cli.main(["sample", out, "--image", str(image), "--prompt", PROMPTS[0], "--out",
                            str(tmp_path / "x.png")]) == 2
    assert "--image needs an image pipeline artifact" in capsys.readouterr().err
