"""Text-conditioned pipelines compiled whole: a tiny random StableDiffusionImg2ImgPipeline (UNet,
CLIP text encoder, generated BPE tokenizer, VAE encoder and decoder; built offline) compiles
into one artifact with per-component specs; load_pipeline returns it on ONNX Runtime, and
its images (img2img, and text-to-image through StableDiffusionPipeline(**components)) match
PyTorch's at the same seed; genzip sample --prompt writes PNGs or a grid;
unknown component names and misplaced flags are one-line errors. A tiny PixArtAlphaPipeline
(T5 encoder, Unigram tokenizer) does the same with the prompt's padding mask."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import genzip
from genzip.tools import compile_cli, genzip_cli
from tests.tiny_pipelines import assert_img2img_and_text_match, pixart, stable_diffusion

PROMPTS = ["a red cat", "a photo of the dog", "blue"]


@pytest.fixture(scope="module")
def sd_pipeline(tmp_path_factory):
    """(pipeline folder, artifact folder) of a tiny StableDiffusionImg2ImgPipeline compiled whole,
    with a spec for the UNet (bare) and for the VAE (by name). One compile serves both the
    img2img and the text-to-image tests (the same components)."""
    root = tmp_path_factory.mktemp("sd")
    folder = root / "sd-pipe"
    stable_diffusion(folder, img2img=True)
    out = root / "artifact"
    assert compile_cli.main([str(folder), "--out", str(out), "--passes", "dce", "--passes", "vae=dce",
                             "--quiet"]) == 0
    return str(folder), str(out)


def test_every_component_with_its_own_spec(sd_pipeline):
    _, out = sd_pipeline
    assert sorted(os.listdir(out)) == ["genzip.json", "model_index.json", "scheduler", "text_encoder", "tokenizer",
                                       "unet", "vae_decoder", "vae_encoder"]
    with open(os.path.join(out, "genzip.json")) as f:
        manifest = json.load(f)
    assert manifest["pipeline"] == "StableDiffusionImg2ImgPipeline"
    assert manifest["passes"] == {"unet": "dce", "text_encoder": "", "vae_decoder": "dce", "vae_encoder": "dce"}
    assert manifest["config"]["passes"] == ["dce", "vae=dce"]
    from genzip.compile import build_compile, resolve_settings

    rebuild = build_compile(resolve_settings(os.path.join(out, "genzip.json")))  # --config ARTIFACT/genzip.json
    assert (rebuild.options.passes, rebuild.component_passes) == ("dce", {"vae": "dce"})
    for part in ("unet", "text_encoder", "vae_decoder", "vae_encoder"):
        assert manifest["fidelity"][part]["cosine"] > 0.999
    assert sorted(os.listdir(os.path.join(out, "tokenizer"))) == ["tokenizer.json", "tokenizer_config.json"]


def test_load_pipeline_images_match_pytorch(sd_pipeline):
    import diffusers

    folder, out = sd_pipeline
    # img2img: the VAE encoder's mean and log-variance, sampled with the same generator.
    # Three prompts: the static-batch UNet (2) runs the CFG batch of 6 in slices.
    assert_img2img_and_text_match(
        out, folder, diffusers.StableDiffusionImg2ImgPipeline, diffusers.StableDiffusionPipeline,
        img2img_prompts=PROMPTS[:2], text_call=dict(prompt=PROMPTS, num_inference_steps=2))


def test_sample_prompts_as_pngs_and_grid(sd_pipeline, tmp_path, capsys):
    from PIL import Image

    _, out = sd_pipeline
    image = tmp_path / "image.png"
    args = ["sample", out, "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--steps", "2", "--json", "--quiet"]
    assert genzip_cli.main([*args, "--out", str(image)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["prompts"] == PROMPTS[:2] and summary["images"] == [str(tmp_path / f"image-{i}.png") for i in (0, 1)]
    assert genzip_cli.main([*args, "--out", str(tmp_path / "grid.png"), "--grid"]) == 0
    capsys.readouterr()
    grid = Image.open(tmp_path / "grid.png")
    first = np.asarray(Image.open(summary["images"][0]))
    assert grid.size == (32, 16) and np.array_equal(np.asarray(grid)[:, :16], first)
    assert genzip_cli.main([*args, "--out", str(tmp_path / "grid.png"), "--grid"]) == 2  # exists, no --force
    assert "exists; pass --force" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--passes", "vea=dce"], "--passes vea=... names no component of a StableDiffusionImg2ImgPipeline; "
                              "name one of unet, text_encoder, vae"),
    (["--passes", "vae=nosuch"], "unknown pass 'nosuch'"),
])
def test_component_specs_refused_in_one_line(sd_pipeline, tmp_path, capsys, argv, message):
    folder, _ = sd_pipeline
    assert compile_cli.main([folder, "--out", str(tmp_path / "x"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and not (tmp_path / "x").exists()


def test_component_spec_on_a_single_model_and_misplaced_flags(sd_pipeline, tmp_path, capsys):
    _, out = sd_pipeline
    assert compile_cli.main(["tiny-pixart", "--out", str(tmp_path / "x"), "--passes", "vae=dce"]) == 2
    assert "names a pipeline component, and tiny-pixart is not a pipeline folder" in capsys.readouterr().err
    assert genzip_cli.main(["sample", out, "--labels", "1", "--out", str(tmp_path / "y.png")]) == 2
    assert "text-conditioned: it takes no --labels" in capsys.readouterr().err
    assert genzip_cli.main(["sample", os.path.join(out, "unet"), "--prompt", "a cat"]) == 2
    assert "--prompt, --image and --grid need a pipeline artifact" in capsys.readouterr().err
    assert genzip_cli.main(["run", out]) == 2
    assert f"pass one of its components ({os.path.join(out, 'unet')})" in capsys.readouterr().err


def test_sample_image_to_image(sd_pipeline, tmp_path, capsys):
    from PIL import Image

    _, out = sd_pipeline
    pixels = (np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "in.png")
    args = ["sample", out, "--image", str(tmp_path / "in.png"), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1],
            "--steps", "3", "--json", "--quiet"]
    assert genzip_cli.main([*args, "--out", str(tmp_path / "out.png")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["image"] == str(tmp_path / "in.png") and summary["strength"] == 0.8  # diffusers' default
    # what the CLI wrote is the img2img pipeline's output on that image at the same seed
    pipe = genzip.load_pipeline(out, providers="cpu")
    pipe.set_progress_bar_config(disable=True)
    want = pipe(prompt=PROMPTS[:2], image=Image.open(tmp_path / "in.png").convert("RGB"), strength=0.8,
                num_inference_steps=3, guidance_scale=4.5, generator=torch.manual_seed(0)).images
    for path, image in zip(summary["images"], want):
        assert np.array_equal(np.asarray(Image.open(path)), np.asarray(image))
    Image.fromarray(pixels[:8]).save(tmp_path / "small.png")
    (tmp_path / "notes.txt").write_text("not an image")
    for extra, message in [(["--image", str(tmp_path / "small.png")], "is 16x8, and this artifact's VAE encoder "
                                                                       "takes 16x16 images"),
                           (["--image", str(tmp_path / "out-0.png"), "--strength", "1.5"], "outside (0, 1]"),
                           (["--strength", "0.5"], "no --image was given"),
                           (["--image", str(tmp_path / "notes.txt")], "cannot be read as an image")]:
        assert genzip_cli.main(["sample", out, "--prompt", "a", "--out", str(tmp_path / "x.png"), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1


def test_pixart_pipeline_with_padding_mask_matches_pytorch(tmp_path):
    import diffusers

    folder, out = tmp_path / "pixart", tmp_path / "artifact"
    pixart(folder)
    assert compile_cli.main([str(folder), "--out", str(out), "--quiet"]) == 0
    with open(out / "transformer" / "genzip.json") as f:
        inputs = {s["name"]: s["shape"] for s in json.load(f)["inputs"]}
    assert inputs["encoder_attention_mask"] == ["batch", 120]  # the padding mask is a graph input
    pipe = genzip.load_pipeline(str(out), providers="cpu")
    assert isinstance(pipe, diffusers.PixArtAlphaPipeline) and type(pipe.tokenizer).__name__.startswith("T5Tokenizer")
    reference = diffusers.PixArtAlphaPipeline.from_pretrained(folder)
    for p in (pipe, reference):
        p.set_progress_bar_config(disable=True)
    # The prompts pad to 120 tokens with zeros in the mask: ignoring it would change the images.
    call = dict(prompt=PROMPTS, num_inference_steps=2, output_type="np", use_resolution_binning=False,
                clean_caption=False)
    got = pipe(generator=torch.manual_seed(0), **call).images
    want = reference(generator=torch.manual_seed(0), **call).images
    assert got.shape == want.shape == (3, 16, 16, 3)
    assert np.abs(got - want).max() < 1e-3 and want.std() > 0.05
