"""genzip-compile PIPELINE_FOLDER on a tiny random DiTPipeline (built offline): one artifact with
the transformer and VAE decoder sub-artifacts, the scheduler and model_index.json; load_pipeline
returns a DiTPipeline on ONNX Runtime whose images match the PyTorch pipeline at the same seed;
genzip sample writes PNGs; single-model tools refuse the pipeline artifact in one line."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import genzip
from genzip.errors import GenzipError
from genzip.tools import compile_cli, genzip_cli


@pytest.fixture(scope="module")
def dit_pipeline(tmp_path_factory):
    """(pipeline folder, artifact folder) of a tiny random DiTPipeline compiled whole."""
    import diffusers

    torch.manual_seed(0)
    # DiTPipeline's null class is 1000, so the model embeds 1000 classes (+1).
    transformer = diffusers.DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=1, sample_size=8,
        patch_size=2, num_embeds_ada_norm=1000, norm_num_groups=4)
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1, latent_channels=4,
        norm_num_groups=4, sample_size=16)
    root = tmp_path_factory.mktemp("pipeline")
    folder = root / "dit-pipe"
    diffusers.DiTPipeline(transformer=transformer.eval(), vae=vae.eval(),
                          scheduler=diffusers.DDIMScheduler(beta_schedule="scaled_linear")).save_pretrained(folder)
    out = root / "artifact"
    assert compile_cli.main([str(folder), "--out", str(out), "--quiet"]) == 0
    return str(folder), str(out)


def test_one_artifact_with_every_component(dit_pipeline):
    _, out = dit_pipeline
    assert sorted(os.listdir(out)) == ["genzip.json", "model_index.json", "scheduler", "transformer", "vae_decoder"]
    with open(os.path.join(out, "genzip.json")) as f:
        manifest = json.load(f)
    assert manifest["kind"] == "pipeline" and manifest["pipeline"] == "DiTPipeline"
    for part in ("transformer", "vae_decoder"):
        assert manifest["fidelity"][part]["cosine"] > 0.999
        with open(os.path.join(out, part, "genzip.json")) as f:
            assert json.load(f)["fidelity"] == manifest["fidelity"][part]


def test_the_vae_decoder_follows_the_export_sizes(dit_pipeline):
    """--height/--width reach the VAE decoder's example latents (the transformer's latent size)."""
    from pathlib import Path

    from genzip.pipeline_parts import vae_decoder

    folder, _ = dit_pipeline
    assert vae_decoder(Path(folder), "transformer")[1].shape == (1, 4, 8, 8)  # the transformer config's sample_size
    assert vae_decoder(Path(folder), "transformer", 4, 6)[1].shape == (1, 4, 4, 6)


def test_load_pipeline_images_match_pytorch(dit_pipeline):
    import diffusers

    folder, out = dit_pipeline
    pipe = genzip.load_pipeline(out, providers="cpu")
    assert isinstance(pipe, diffusers.DiTPipeline) and type(pipe.scheduler).__name__ == "DDIMScheduler"
    reference = diffusers.DiTPipeline.from_pretrained(folder)
    for p in (pipe, reference):
        p.set_progress_bar_config(disable=True)
    call = dict(class_labels=[1, 3, 5], num_inference_steps=3, output_type="np")
    got = pipe(generator=torch.manual_seed(0), **call).images
    want = reference(generator=torch.manual_seed(0), **call).images
    assert got.shape == want.shape == (3, 16, 16, 3)
    assert np.abs(got - want).max() < 1e-3


def test_genzip_sample_writes_pngs(dit_pipeline, tmp_path, capsys):
    from PIL import Image

    _, out = dit_pipeline
    image = tmp_path / "image.png"
    rc = genzip_cli.main(["sample", out, "--labels", "1,3", "--steps", "2", "--out", str(image), "--json", "--quiet"])
    summary = json.loads(capsys.readouterr().out)
    assert rc == 0 and summary["images"] == [str(tmp_path / "image-0.png"), str(tmp_path / "image-1.png")]
    assert Image.open(summary["images"][0]).size == (16, 16)


def test_single_model_tools_refuse_a_pipeline_artifact(dit_pipeline, capsys):
    _, out = dit_pipeline
    rc = genzip_cli.main(["run", out])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "whole-pipeline artifact" in err and len(err.splitlines()) == 1
    with pytest.raises(GenzipError, match="is not a pipeline artifact"):
        genzip.load_pipeline(os.path.join(out, "transformer"))


def test_text_len_is_refused_for_a_pipeline_folder(dit_pipeline, tmp_path):
    """The tokenizer's maximum length sets every component's text length: refused before any export."""
    from genzip.compile import CompileOptions
    from genzip.errors import GenzipError
    from genzip.pipeline import compile_pipeline

    folder, _ = dit_pipeline
    with pytest.raises(GenzipError, match="--text-len / --seq-len cannot apply to a DiTPipeline folder"):
        compile_pipeline(folder, str(tmp_path / "out"), CompileOptions(text_len=12))
    assert not (tmp_path / "out").exists()


def test_genzip_compile_pipeline_compiles_a_pipeline_folder_whole(dit_pipeline, tmp_path):
    """Python parity with genzip-compile: every component, per-component specs, load() -> the pipeline."""
    import diffusers

    folder, _ = dit_pipeline
    art = genzip.compile_pipeline(folder, out=str(tmp_path / "a"), target="onnx", passes=["dce", "vae=dce"])
    assert art.manifest["kind"] == "pipeline" and set(art.fidelity) == {"transformer", "vae_decoder"}
    assert art.manifest["passes"]["vae_decoder"] == "dce" and art.manifest["passes"]["transformer"] == "dce"
    assert isinstance(art.load(providers="cpu"), diffusers.DiTPipeline)
    with pytest.raises(GenzipError, match="tiny-llama is not a diffusers pipeline folder"):
        genzip.compile_pipeline("tiny-llama")
    with pytest.raises(GenzipError, match="names a pipeline component, and genzip.compile compiles one model"):
        genzip.compile("tiny-llama", passes=["vae=dce"])
