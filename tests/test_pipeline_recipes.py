"""Calibrated recipes on a whole pipeline: ``genzip-compile PIXART_FOLDER --recipe w8a8`` quantizes
the masked PixArt transformer, calibrated on its own denoising trajectory (recorded like a DiT
folder's, in the export's input layout: padded prompt masks, micro-conditions); the pipeline's
images stay close to float32 PyTorch's at the same seed; genzip sample writes its PNG."""

from __future__ import annotations

import json

import numpy as np
import torch

import genzip
from genzip.tools import compile_cli, genzip_cli
from tests.tiny_pipelines import pixart


def test_pixart_pipeline_w8a8_calibrates_on_its_trajectory(tmp_path):
    import diffusers

    folder, out = tmp_path / "pixart", tmp_path / "artifact"
    pixart(folder)
    assert compile_cli.main([str(folder), "--out", str(out), "--recipe", "w8a8", "--quiet"]) == 0
    with open(out / "transformer" / "genzip.json") as f:
        manifest = json.load(f)
    stats = {s["pass"]: s["stats"] for s in manifest["pass_stats"]}
    assert stats["calibrate"]["samples"] == 8  # 2 trajectories x 4 timesteps
    assert stats["quant{scheme=w8a8}"]["quantized"] > 0 and manifest["fidelity"]["cosine"] > 0.999
    pipe = genzip.load_pipeline(str(out), providers="cpu")
    reference = diffusers.PixArtAlphaPipeline.from_pretrained(folder)
    for p in (pipe, reference):
        p.set_progress_bar_config(disable=True)
    call = dict(prompt=["a red cat", "a photo of the dog", "blue"], num_inference_steps=2, output_type="np",
                use_resolution_binning=False, clean_caption=False)
    got, want = (p(generator=torch.manual_seed(0), **call).images for p in (pipe, reference))
    err = np.abs(got - want)
    # measured 2.6e-3 max abs (PSNR 65 dB); float32 artifacts match to 5e-7, so int8 did change it
    assert 1e-5 < err.max() < 1e-2 and want.std() > 0.05
    # genzip sample runs PixArt without resolution binning (a tiny sample size has no bins); 2 steps:
    # PixArt's 1-step path reads a second scheduler output that DPM-Solver lacks, in PyTorch too
    assert genzip_cli.main(["sample", str(out), "--prompt", "a red cat", "--steps", "2", "--out",
                            str(tmp_path / "cat.png"), "--quiet"]) == 0
