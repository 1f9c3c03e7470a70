"""genzip.runtime: sampler with plans, diffusers drop-in, call-identity caches, CLI, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from share_artifacts import compiled

import genzip
from genzip.errors import GenzipError
from genzip.runtime import plan as P
from genzip.runtime import sampler
from genzip.runtime.model import PlannedModel
from genzip.tools import genzip_cli

STEPS = 4


@pytest.fixture(scope="module")
def arts(tmp_path_factory, pixart_ort):
    return compiled(tmp_path_factory), pixart_ort[0]


def _plan(method_rows, steps=STEPS):
    return P.Plan(steps, len(method_rows), 32, tuple(tuple(r) for r in method_rows))


MIXED = _plan([["full", "share-step", "window-residual", "share-cfg"],
               ["full", "window-residual+share-cfg", "full+share-cfg", "share-step"]])


def _cond(model, batch=1):
    return sampler.default_conditioning(model, batch, seed=0)


@pytest.mark.parametrize("scheduler", ["dpm", "flow-euler"])
def test_all_full_plan_equals_artifact_without_share_attn(arts, scheduler):
    share, base = arts
    base_m, share_m = PlannedModel(base), PlannedModel(share, P.Plan.all_full(STEPS, 2, 32))
    c, u = _cond(base_m)
    ref = sampler.sample(base_m, c, u, steps=STEPS, cfg=4.5, scheduler=scheduler)
    got = sampler.sample(share_m, c, u, steps=STEPS, cfg=4.5, scheduler=scheduler)
    np.testing.assert_array_equal(got.latents, ref.latents)
    assert got.total_ms > 0 and len(got.step_ms) == STEPS
    share_m.set_plan(MIXED)
    mixed = sampler.sample(share_m, c, u, steps=STEPS, cfg=4.5, scheduler=scheduler)
    assert not np.array_equal(mixed.latents, ref.latents) and np.isfinite(mixed.latents).all()


def test_batch_of_images_matches_one_at_a_time(arts):
    share, _ = arts
    model = PlannedModel(share, MIXED)
    c, u = _cond(model, batch=2)
    both = sampler.sample(model, c, u, steps=STEPS, cfg=4.5).latents
    first = sampler.sample(model, c[:1], u[:1], steps=STEPS, cfg=4.5).latents
    assert both.shape == (2, 4, 16, 16)
    np.testing.assert_allclose(both[:1], first, rtol=1e-4, atol=1e-4)


def _pipeline(transformer):
    import diffusers

    return diffusers.PixArtAlphaPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=transformer,
                                         scheduler=diffusers.DPMSolverMultistepScheduler())


def _pipe_latents(pipe, c, u, steps=STEPS):
    ones = torch.ones(c.shape[:2])
    return pipe(negative_prompt=None, prompt_embeds=torch.from_numpy(c), prompt_attention_mask=ones,
                negative_prompt_embeds=torch.from_numpy(u), negative_prompt_attention_mask=ones,
                num_inference_steps=steps, guidance_scale=4.5, generator=torch.Generator().manual_seed(0),
                height=128, width=128, use_resolution_binning=False, output_type="latent").images.numpy()


@pytest.mark.parametrize("plan", [None, MIXED], ids=["no-plan", "mixed-plan"])
def test_drop_in_pipeline_transformer_matches_sampler(arts, plan):
    share, _ = arts
    transformer = genzip.load(share, plan=plan, cfg="uncond-cond")
    assert transformer.config.in_channels == 4 and transformer.config.out_channels == 8
    assert transformer.dtype == torch.float32
    c, u = _cond(transformer.model)
    got = _pipe_latents(_pipeline(transformer), c, u)
    ref = sampler.sample(PlannedModel(share, plan), c, u, steps=STEPS, cfg=4.5).latents
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    # A second run through the same pipeline starts over (timesteps went up): same result.
    np.testing.assert_array_equal(_pipe_latents(_pipeline(transformer), c, u), got)
    # genzip.load results still run plain numpy feeds.
    feeds = transformer.model.manifest["inputs"]
    assert "output" in transformer(**{s["name"]: np.zeros([2 if isinstance(d, str) else d for d in s["shape"]],
                                                          np.dtype(s["dtype"])) for s in feeds})  # mask: int64


def test_two_prompts_from_one_seed_are_not_a_cfg_pair(arts):
    """Identical latent halves do not make a CFG pair: without cfg=, a plan's share-cfg step
    computes each prompt's own attention (ASC would copy one prompt's over the other's)."""
    share, _ = arts
    asc = _plan([["full", "share-cfg", "share-cfg", "share-cfg"]] * 2)
    c, u = _cond(genzip.load(share).model)
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    two = torch.from_numpy(np.concatenate([c, u]))
    outs = {}
    for cfg in (None, "none", "uncond-cond"):
        transformer = genzip.load(share, plan=asc, cfg=cfg)
        for t in (900, 700):
            outs[cfg] = transformer(torch.cat([x, x]), encoder_hidden_states=two, timestep=torch.tensor([t, t]),
                                    return_dict=False)[0].numpy()
    alone = genzip.load(share, plan=asc, cfg="none")
    for t in (900, 700):
        first = alone(x, encoder_hidden_states=two[:1], timestep=torch.tensor([t]), return_dict=False)[0].numpy()
    np.testing.assert_allclose(outs[None][:1], first, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(outs[None], outs["none"])
    # Declared a pair, step 1 copies the second half's attention over the first: different output.
    assert np.abs(outs["uncond-cond"][:1] - first).max() > 1e-3
    with pytest.raises(GenzipError, match="not a CFG batch layout"):
        genzip.load(share, cfg="cond-first")


def test_split_cfg_calls_use_their_own_caches(arts):
    """Two transformer calls per step (uncond, cond) give what one CFG-batched call gives."""
    share, _ = arts
    plan = _plan([["full", "share-step", "window-residual", "share-step"]] * 2)
    batched, split = genzip.load(share, plan=plan), genzip.load(share, plan=plan)
    c, u = _cond(batched.model)
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    for t in (900, 700, 500, 300):
        ts = torch.tensor([t, t])
        pair = batched(torch.cat([x, x]), encoder_hidden_states=torch.from_numpy(np.concatenate([u, c])),
                       timestep=ts, return_dict=False)[0]
        parts = [split(x, encoder_hidden_states=torch.from_numpy(e), timestep=ts[:1], return_dict=False)[0]
                 for e in (u, c)]
        np.testing.assert_allclose(torch.cat(parts).numpy(), pair.numpy(), rtol=1e-4, atol=1e-4)
        x = x - 0.01 * pair[1:, :4]
    assert len(split.model.caches.slots) == 2 and len(batched.model.caches.slots) == 1


def test_a_padded_prompt_has_its_own_cache_slot(arts):
    """The same embeddings with a padded mask are another conditioning: they must not read the
    caches the unpadded prompt filled (an all-ones mask is the unpadded prompt)."""
    share, _ = arts
    transformer = genzip.load(share, plan=_plan([["full", "share-step", "full", "share-step"]] * 2))
    c, _ = _cond(transformer.model)
    x, t = torch.zeros(1, 4, 16, 16), torch.tensor([900])
    text = torch.from_numpy(c)
    padded = torch.ones(1, c.shape[1], dtype=torch.int64)
    padded[:, -2:] = 0
    for mask in (None, torch.ones_like(padded), padded):
        transformer(x, encoder_hidden_states=text, encoder_attention_mask=mask, timestep=t, return_dict=False)
    assert len(transformer.model.caches.slots) == 2


def test_bad_input(arts, tmp_path):
    share, base = arts
    with pytest.raises(GenzipError, match="3 layers but artifact .* has 2"):
        PlannedModel(share, P.Plan.all_full(STEPS, 3))
    with pytest.raises(GenzipError, match="without share-attn"):
        PlannedModel(base, P.Plan.all_full(STEPS, 2))
    model = PlannedModel(share, P.Plan.all_full(STEPS, 2))
    c, u = _cond(model)
    with pytest.raises(GenzipError, match="plan is for 4 steps but 6"):
        sampler.sample(model, c, u, steps=6, cfg=4.5)
    transformer = genzip.load(share, plan=P.Plan.all_full(2, 2))
    with pytest.raises(GenzipError, match="step 2 is beyond the plan's 2 steps"):
        _pipe_latents(_pipeline(transformer), c, u, steps=3)


def test_cli_sample(arts, tmp_path, capsys):
    share, base = arts
    plan_path = tmp_path / "plan.json"
    MIXED.save(str(plan_path))
    out = tmp_path / "lat.npz"
    assert genzip_cli.main(["sample", share, "--plan", str(plan_path), "--steps", str(STEPS), "--cfg", "4.5",
                            "--seed", "0", "--out", str(out), "--json", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["total_ms"] > 0 and summary["methods"]["share-step"] == 2
    with np.load(out) as data:
        assert data["latents"].shape == (1, 4, 16, 16)
    assert genzip_cli.main(["sample", share, "--plan", str(plan_path), "--steps", str(STEPS), "--vs-full",
                            "--json"]) == 0
    bench = json.loads(capsys.readouterr().out)
    assert bench["speedup"] > 0 and bench["psnr_db"] > 20 and 0 < bench["attn_flops_saved"] < 1
    assert genzip_cli.main(["sample", base, "--plan", str(plan_path), "--steps", str(STEPS)]) == 2
    assert "without share-attn" in capsys.readouterr().err
    assert genzip_cli.main(["sample", share, "--plan", str(plan_path), "--steps", "5"]) == 2
    assert "plan is for 4 steps" in capsys.readouterr().err
    embeds = tmp_path / "embeds.npz"
    np.savez(embeds, prompt_embeds=np.ones((2, 8, 32), np.float32))
    assert genzip_cli.main(["sample", share, "--embeds", str(embeds), "--steps", "2", "--out", str(out)]) == 0
    with np.load(out) as data:
        assert data["latents"].shape == (2, 4, 16, 16)
    assert genzip_cli.main(["sample", share, "--steps", "2", "--scheduler", "ddim"]) == 2
    assert "unknown scheduler" in capsys.readouterr().err
    plan_path.write_text("{broken")
    assert genzip_cli.main(["sample", share, "--plan", str(plan_path)]) == 2
    err = capsys.readouterr().err
    assert "not valid JSON" in err and err.count("\n") == 1
