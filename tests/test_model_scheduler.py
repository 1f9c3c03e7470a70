"""The sampler uses the model's own scheduler: an artifact compiled from a diffusers pipeline
folder ships its scheduler_config.json (see test_frontend_hf_folders for the compile side),
`genzip sample` / the sampler build that scheduler, `--scheduler` swaps the class on the same
noise schedule, and an artifact without one samples with DPM-Solver++ defaults, as stated."""

from __future__ import annotations

import json
import os
import shutil

import diffusers
import numpy as np
import pytest

from genzip.errors import GenzipError
from genzip.runtime.model import PlannedModel
from genzip.runtime.sampler import sample, scheduler_for
from genzip.tools import genzip_cli

CONFIG = "scheduler/scheduler_config.json"


def _with_scheduler(folder: str, dest, scheduler_config: dict) -> str:
    """A copy of ``folder`` that ships ``scheduler_config`` as a pipeline-folder compile does."""
    out = str(dest)
    shutil.copytree(folder, out)
    os.makedirs(os.path.join(out, "scheduler"))
    with open(os.path.join(out, CONFIG), "w") as f:
        json.dump(scheduler_config, f)
    with open(os.path.join(out, "genzip.json")) as f:
        manifest = json.load(f)
    manifest.setdefault("source_info", {})["scheduler_config"] = CONFIG
    with open(os.path.join(out, "genzip.json"), "w") as f:
        json.dump(manifest, f)
    return out


@pytest.fixture(scope="module")
def ddim_artifact(pixart_ort, tmp_path_factory):
    config = json.loads(diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_end=0.012).to_json_string())
    return _with_scheduler(pixart_ort[0], tmp_path_factory.mktemp("sched") / "a", config)


def _latents(folder, **kw):
    model = PlannedModel(folder)
    cond = np.random.default_rng(0).standard_normal(
        [d if isinstance(d, int) else 1 for d in next(s["shape"] for s in model.inputs
                                                      if s["name"] == "encoder_hidden_states")]).astype(np.float32)
    return sample(model, cond, np.zeros_like(cond), steps=3, cfg=4.5, seed=0, **kw).latents


def test_the_artifacts_own_scheduler_is_the_default(ddim_artifact, pixart_ort):
    sched, what = scheduler_for(PlannedModel(ddim_artifact))
    assert isinstance(sched, diffusers.DDIMScheduler) and sched.config.beta_schedule == "scaled_linear"
    assert what == "DDIMScheduler (the model's scheduler_config.json)"
    swapped, what = scheduler_for(PlannedModel(ddim_artifact), "dpm")  # --scheduler: class swapped, betas kept
    assert isinstance(swapped, diffusers.DPMSolverMultistepScheduler) and swapped.config.beta_end == 0.012
    plain, what = scheduler_for(PlannedModel(pixart_ort[0]))
    assert isinstance(plain, diffusers.DPMSolverMultistepScheduler) and "diffusers defaults" in what
    own, dpm_on_own, defaults = _latents(ddim_artifact), _latents(ddim_artifact, scheduler="dpm"), _latents(pixart_ort[0])
    assert np.array_equal(defaults, _latents(pixart_ort[0], scheduler="dpm"))  # same weights, dpm defaults
    assert not np.allclose(own, defaults) and not np.allclose(dpm_on_own, defaults)


def test_genzip_sample_states_the_scheduler(ddim_artifact, capsys):
    rc = genzip_cli.main(["sample", ddim_artifact, "--steps", "2", "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert json.loads(out)["scheduler"] == "DDIMScheduler (the model's scheduler_config.json)"


def test_a_scheduler_config_naming_no_scheduler_is_one_line(pixart_ort, tmp_path):
    folder = _with_scheduler(pixart_ort[0], tmp_path / "bad", {"_class_name": "UNet2DModel"})
    with pytest.raises(GenzipError, match="names 'UNet2DModel', not a diffusers scheduler"):
        scheduler_for(PlannedModel(folder))
