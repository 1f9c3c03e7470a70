"""genzip plan: DiTFastAttn greedy search (searches/ditfastattn.py) and its CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from share_artifacts import compiled

from genzip.errors import GenzipError
from genzip.runtime import plan as P
from genzip.runtime import sampler
from genzip.runtime.model import PlannedModel
from genzip.searches import ditfastattn as search
from genzip.tools import genzip_cli

STEPS = 4


@pytest.fixture(scope="module")
def share(tmp_path_factory):
    return compiled(tmp_path_factory)


def _search(folder, delta):
    model = PlannedModel(folder)
    c, u = sampler.default_conditioning(model, 1, seed=0)
    return model, c, u, search.greedy_search(model, c, u, delta=delta, steps=STEPS, cfg=4.5)


def test_delta_zero_gives_all_full(share):
    _, _, _, result = _search(share, 0.0)
    assert result.plan == P.Plan.all_full(STEPS, 2, 32)
    assert result.calls == result.max_calls == 1 + (STEPS - 1) * (4 * 2 + 2)


def test_large_delta_gives_share_step_after_step_zero(share):
    model, c, u, result = _search(share, 1e9)
    assert all(row == ("full",) + ("share-step",) * (STEPS - 1) for row in result.plan.methods)
    assert result.calls == 1 + (STEPS - 1) * (1 + 2 + 1)  # reference + one candidate per layer + commit
    # The searched trajectory is what the runtime reproduces with the plan.
    model.set_plan(result.plan)
    np.testing.assert_array_equal(sampler.sample(model, c, u, steps=STEPS, cfg=4.5).latents, result.latents)


def test_mixed_plan_replays_exactly(share):
    model, c, u, result = _search(share, 0.01)
    counts = result.plan.counts()
    assert counts["full"] >= 2 and len([m for m, n in counts.items() if n]) >= 3  # a real mix
    model.set_plan(result.plan)
    np.testing.assert_array_equal(sampler.sample(model, c, u, steps=STEPS, cfg=4.5).latents, result.latents)


def test_losses_and_flops():
    ref = np.array([1.0, -1.0, 2.0])
    assert search.relative_l1(ref, ref) == 0.0 == search.dfa_relative_error(ref, ref)
    assert search.relative_l1(ref * 1.1, ref) == pytest.approx(0.1)
    # elementwise |ref - cand| / (max(ref, cand) + 1e-6), clipped to [0, 10], averaged
    cand = np.array([2.0, -1.0, 0.0])
    assert search.dfa_relative_error(cand, ref) == pytest.approx((0.5 + 0.0 + 1.0) / 3, rel=1e-5)
    plan = P.Plan(3, 1, 4, (("full", "window-residual", "share-step"),))
    # step 0 full refreshes the residual (full + window), step 1 window, step 2 nothing
    assert search.attention_flops(plan, 10.0, 2.0) == 12.0 + 2.0


def test_refuses_plain_artifact(pixart_ort):
    model = PlannedModel(pixart_ort[0])
    c, u = sampler.default_conditioning(model, 1, seed=0)
    with pytest.raises(GenzipError, match="without share-attn"):
        search.greedy_search(model, c, u, delta=0.1, steps=2, cfg=4.5)


def test_cli_plan(share, tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert genzip_cli.main(["plan", share, "--delta", "1e9", "--steps", str(STEPS), "--cfg", "4.5",
                            "--out", str(out), "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert "step 4/4" in captured.err  # progress
    assert summary["methods"]["share-step"] == 2 * (STEPS - 1)
    assert summary["conditions"] == 4 and "on 4 conditions" in captured.err  # DiTFastAttn: several prompts
    assert summary["attn_flops_saved"] == pytest.approx(1 - 1 / STEPS)  # only step 0 computes attention
    assert summary["calls"] <= summary["max_calls"]
    assert P.load_plan(str(out)).steps == STEPS
    with open(summary["heatmap"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert genzip_cli.main(["sample", share, "--plan", str(out), "--steps", str(STEPS), "--json", "--quiet"]) == 0
