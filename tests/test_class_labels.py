"""Class-label conditioning (tiny-dit, a diffusers DiTTransformer2DModel): compile with share-attn,
sample, plan search, DiTPipeline drop-in, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from share_artifacts import compiled_preset

import genzip
from genzip.errors import GenzipError
from genzip.runtime import conditioning, sampler
from genzip.runtime import plan as P
from genzip.runtime.model import PlannedModel
from genzip.tools import genzip_cli

STEPS = 4
NULL = 1000  # tiny-dit's num_embeds_ada_norm
MIXED = P.Plan(STEPS, 2, 16, (("full", "share-step", "window-residual", "share-cfg"),
                              ("full", "window-residual+share-cfg", "full+share-cfg", "share-step")))


@pytest.fixture(scope="module")
def arts(tmp_path_factory):
    share = compiled_preset(tmp_path_factory, "tiny-dit", "canonicalize-attn,share-attn{tokens=16}")
    base = compiled_preset(tmp_path_factory, "tiny-dit", "canonicalize-attn,dce")
    return share, base


def test_tiny_dit_compiles_with_share_attn_on_its_self_attention(arts):
    share, _ = arts
    model = PlannedModel(share)
    specs = {s["name"]: s for s in model.inputs}
    assert specs["class_labels"]["dtype"] == "int64" and "encoder_hidden_states" not in specs
    stats = {r["pass"].split("{")[0]: r["stats"] for r in model.manifest["pass_stats"]}
    assert stats["canonicalize-attn"]["self"] == 2 and stats["canonicalize-attn"]["cross"] == 0
    assert model.layers == 2 and model.layout.cfg_order == ("uncond", "cond")
    assert [lay["scope"] for lay in model.layout.layers] == ["transformer_blocks.0.attn1", "transformer_blocks.1.attn1"]
    assert conditioning.conditioning_input(model) == "class_labels" and conditioning.null_class(model) == NULL
    cond, uncond = sampler.default_conditioning(model, 3, seed=0)
    assert cond.dtype == np.int64 and cond.shape == (3,) and ((cond >= 0) & (cond < NULL)).all()
    assert (uncond == NULL).all()


def test_null_class_read_from_the_graph_without_a_preset(arts):
    share, _ = arts
    model = PlannedModel(share)
    model.manifest = {**model.manifest, "source_info": {}}  # as if compiled from a diffusers folder
    assert conditioning.null_class(model) == NULL  # the class embedding table has 1001 rows


@pytest.mark.parametrize("scheduler", ["dpm", "flow-euler"])
def test_all_full_plan_equals_artifact_without_share_attn(arts, scheduler):
    share, base = arts
    base_m, share_m = PlannedModel(base), PlannedModel(share, P.Plan.all_full(STEPS, 2, 16))
    c, u = conditioning.class_pair(base_m, np.array([3, 977]), "test")
    ref = sampler.sample(base_m, c, u, steps=STEPS, cfg=4.5, scheduler=scheduler).latents
    np.testing.assert_array_equal(sampler.sample(share_m, c, u, steps=STEPS, cfg=4.5, scheduler=scheduler).latents, ref)
    assert ref.shape == (2, 4, 16, 16) and not np.allclose(ref[0], ref[1])  # the labels matter
    other = sampler.sample(base_m, *conditioning.class_pair(base_m, np.array([4, 977]), "test"), steps=STEPS, cfg=4.5,
                           scheduler=scheduler).latents
    assert not np.allclose(other[0], ref[0]) and np.allclose(other[1], ref[1], atol=1e-5)
    share_m.set_plan(MIXED)
    mixed = sampler.sample(share_m, c, u, steps=STEPS, cfg=4.5, scheduler=scheduler).latents
    assert not np.array_equal(mixed, ref) and np.isfinite(mixed).all()


def _pipe_latents(transformer, labels, steps=STEPS):
    """DiTPipeline's final latents (its CFG batch is [cond, null]), read at the VAE."""
    import diffusers

    vae = diffusers.AutoencoderKL(block_out_channels=(8,), norm_num_groups=8, latent_channels=4, sample_size=16)
    seen = []
    decode = vae.decode
    vae.decode = lambda z, *a, **k: seen.append(z * vae.config.scaling_factor) or decode(z, *a, **k)
    pipe = diffusers.DiTPipeline(transformer=transformer, vae=vae, scheduler=diffusers.DPMSolverMultistepScheduler())
    pipe.set_progress_bar_config(disable=True)
    pipe(class_labels=list(labels), num_inference_steps=steps, guidance_scale=4.5,
         generator=torch.Generator().manual_seed(0), output_type="np")
    return seen[0].detach().numpy()


@pytest.mark.parametrize("plan", [None, MIXED], ids=["no-plan", "mixed-plan"])
def test_dit_pipeline_drop_in_matches_sampler(arts, plan):
    share, _ = arts
    transformer = genzip.load(share, plan=plan)
    assert transformer.config.in_channels == 4 and transformer.config.sample_size == 16
    labels = np.array([3, 977])
    got = _pipe_latents(transformer, labels)
    model = PlannedModel(share, plan)
    ref = sampler.sample(model, *conditioning.class_pair(model, labels, "test"), steps=STEPS, cfg=4.5).latents
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=5e-4)  # batch 4 vs 2 in ORT; unswapped ASC: ~2.5
    with pytest.raises(GenzipError, match="out of range"):
        transformer(torch.zeros(1, 4, 16, 16), timestep=torch.tensor([1.0]), class_labels=torch.tensor([1001]))


def test_cli_plan_with_class_label_calibration(arts, tmp_path, capsys):
    share, _ = arts
    calib = tmp_path / "calib.npz"
    np.savez(calib, class_labels=np.array([1, 500], dtype=np.int64))
    for delta, method in (("0", "full"), ("1e9", "share-step")):
        out = tmp_path / f"plan{delta}.json"
        assert genzip_cli.main(["plan", share, "--delta", delta, "--steps", str(STEPS), "--calib", str(calib),
                                "--out", str(out), "--json", "--quiet"]) == 0
        summary = json.loads(capsys.readouterr().out)
        plan = P.load_plan(str(out))
        assert (plan.steps, plan.layers) == (STEPS, 2) and summary["calls"] <= summary["max_calls"]
        assert all(row == ("full",) + (method,) * (STEPS - 1) for row in plan.methods)
    assert summary["attn_flops_saved"] == pytest.approx(1 - 1 / STEPS)
    # no calibration file: seeded default labels, several distinct ones
    capsys.readouterr()
    assert genzip_cli.main(["plan", share, "--delta", "0.05", "--steps", str(STEPS), "--out",
                            str(tmp_path / "p.json"), "--quiet", "--json", "--conditions", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["conditions"] == 3
    from genzip.runtime.conditioning import default_conditioning
    from genzip.runtime.model import PlannedModel

    labels, null = default_conditioning(PlannedModel(share), 6, seed=0, distinct=True)
    assert len(set(labels.tolist())) == 6 and set(null.tolist()) == {1000}
    assert genzip_cli.main(["plan", share, "--out", str(tmp_path / "q.json"), "--conditions", "0", "--quiet"]) == 2
    assert "--conditions 0 must be >= 1" in capsys.readouterr().err


def test_cli_sample_with_labels(arts, tmp_path, capsys):
    share, _ = arts
    out, npz = tmp_path / "lat.npz", tmp_path / "labels.npz"
    assert genzip_cli.main(["sample", share, "--labels", "3,977", "--steps", "2", "--out", str(out),
                            "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["batch"] == 2
    with np.load(out) as data:
        by_flag = data["latents"]
    np.savez(npz, class_labels=np.array([3, 977]))
    assert genzip_cli.main(["sample", share, "--embeds", str(npz), "--steps", "2", "--out", str(out), "--quiet"]) == 0
    with np.load(out) as data:
        np.testing.assert_array_equal(data["latents"], by_flag)
    assert by_flag.shape == (2, 4, 16, 16) and np.isfinite(by_flag).all()
    assert genzip_cli.main(["sample", share, "--steps", "2", "--json", "--quiet"]) == 0  # default labels


@pytest.mark.parametrize("args, message", [
    (["--labels", "1000"], "class label 1000 is out of range [0, 1000)"),
    (["--labels=-1,2"], "class label -1 is out of range"),
    (["--labels", "a,b"], "not a comma-separated list of integers"),
    (["--embeds", "EMBEDS"], "has no 'class_labels' array"),
    (["--embeds", "FLOATS"], "must be a non-empty 1-D integer array"),
])
def test_bad_class_conditioning(arts, tmp_path, capsys, args, message):
    share, _ = arts
    np.savez(tmp_path / "embeds.npz", prompt_embeds=np.ones((1, 8, 32), np.float32))
    np.savez(tmp_path / "floats.npz", class_labels=np.ones((2,), np.float32))
    paths = {"EMBEDS": str(tmp_path / "embeds.npz"), "FLOATS": str(tmp_path / "floats.npz")}
    args = [paths.get(a, a) for a in args]
    assert genzip_cli.main(["sample", share, "--steps", "2", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    if args[0] == "--embeds":  # the plan search reads calibration the same way
        assert genzip_cli.main(["plan", share, "--steps", "2", "--calib", args[1], "--out",
                                str(tmp_path / "p.json")]) == 2
        assert message in capsys.readouterr().err


def test_labels_refused_for_a_text_dit():
    from types import SimpleNamespace

    from genzip.tools.cmd_sample import conditioning as cli_conditioning

    text_dit = SimpleNamespace(folder="pix", manifest={}, inputs=[{"name": "hidden_states"}, {"name": "timestep"},
                                                     {"name": "encoder_hidden_states", "shape": ["batch", 8, 32]}])
    with pytest.raises(GenzipError, match="--labels needs a class-conditional DiT"):
        cli_conditioning(text_dit, None, 1, 0, "3")
    cond, uncond = cli_conditioning(text_dit, None, 2, 0)
    assert cond.shape == (2, 8, 32) and cond.dtype == np.float32 and not uncond.any()
    with pytest.raises(GenzipError, match="neither an 'encoder_hidden_states' nor a 'class_labels'"):
        conditioning.conditioning_input(SimpleNamespace(folder="llm", inputs=[{"name": "input_ids"}]))
