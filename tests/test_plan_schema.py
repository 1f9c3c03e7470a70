"""Plan schema (runtime/plan.py): validation on load, residual bookkeeping, modes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from genzip.errors import GenzipError
from genzip.runtime import plan as P


def _plan(rows, steps=None, window=8):
    return {"schema": 1, "steps": steps or len(rows[0]), "layers": len(rows), "window": window, "methods": rows}


def test_round_trip(tmp_path):
    plan = P.from_json(_plan([["full", "share-step", "window-residual"], ["full", "share-cfg", "full+share-cfg"]]))
    path = tmp_path / "p.json"
    plan.save(str(path))
    assert P.load_plan(str(path)) == plan
    assert plan.counts()["share-step"] == 1


@pytest.mark.parametrize("rows, words", [
    ([["share-step", "full"]], "layer 0 step 0"),
    ([["full", "full"], ["full", "bogus"]], "layer 1 step 1"),
    ([["full", "full"], ["full"]], "layer 1 has 1 steps"),
])
def test_invalid_plans_name_layer_and_step(rows, words):
    with pytest.raises(GenzipError, match=words):
        P.from_json(_plan(rows, steps=2 if len(rows[0]) == 2 else None))


def test_residual_needs_earlier_full():
    # Step 0 is full in a valid plan, so a residual is always there by step 1; a plan
    # starting with WA-RS is refused naming the layer and step.
    with pytest.raises(GenzipError, match="layer 1 step 0"):
        P.from_json(_plan([["full", "full"], ["window-residual", "full"]]))
    P.from_json(_plan([["full", "full+share-cfg", "window-residual"]]))  # step 0's full counts


def test_bad_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(GenzipError, match="not valid JSON") as e:
        P.load_plan(str(bad))
    assert "\n" not in str(e.value)
    bad.write_text(json.dumps({"schema": 2}))
    with pytest.raises(GenzipError, match="schema 2"):
        P.load_plan(str(bad))
    with pytest.raises(GenzipError, match="does not exist"):
        P.load_plan(str(tmp_path / "missing.json"))


def test_modes_refresh_residual_only_when_needed():
    plan = P.from_json(_plan([
        ["full", "window-residual", "full", "share-step"],
        ["full", "share-step", "share-cfg", "window-residual+share-cfg"],
    ]))
    # layer 1: the WA-RS+ASC step reads the residual of the share-cfg step (the layer's latest
    # full-attention step), so that step refreshes it and step 0 need not.
    assert plan.modes(0) == [P.MODE_FULL_RESIDUAL, P.MODE_FULL]
    assert plan.modes(1) == [P.MODE_WINDOW, P.MODE_SHARE_STEP]
    assert plan.modes(2) == [P.MODE_FULL, P.MODE_FULL_CFG_RESIDUAL]
    assert plan.modes(3) == [P.MODE_SHARE_STEP, P.MODE_WINDOW_CFG]
    with pytest.raises(GenzipError, match="step 4 is beyond"):
        plan.modes(4)


def test_full_only_refresh_rule_replays_the_old_residual():
    """refresh=full-only (genzip before issue 16): a full+share-cfg step does not refresh, so
    the WA-RS steps after it read the residual of the layer's step-0 ``full``."""
    plan = P.from_json(_plan([["full", "window-residual", "full+share-cfg", "window-residual", "window-residual"]]))
    new = [plan.modes(t)[0] for t in range(5)]
    old = [plan.modes(t, P.REFRESH_FULL_ONLY)[0] for t in range(5)]
    assert new == [P.MODE_FULL_RESIDUAL, P.MODE_WINDOW, P.MODE_FULL_CFG_RESIDUAL, P.MODE_WINDOW, P.MODE_WINDOW]
    assert old == [P.MODE_FULL_RESIDUAL, P.MODE_WINDOW, P.MODE_FULL_CFG, P.MODE_WINDOW, P.MODE_WINDOW]
    with pytest.raises(GenzipError, match="refresh rule"):
        plan.modes(0, "sometimes")


def _reference_need_compute_residual(steps_method: list[str]) -> list[bool]:
    """DiTFastAttn's FastAttnProcessor.compute_need_compute_residual, restated from its
    reference code (modules/fast_attn_processor.py): a step whose method contains
    'full_attn' computes the residual when a later step contains 'residual_window_attn'
    before any later step containing 'full_attn'."""
    need = []
    for i, method in enumerate(steps_method):
        found = False
        if "full_attn" in method:
            for later in steps_method[i + 1:]:
                if "residual_window_attn" in later:
                    found = True
                if "full_attn" in later:
                    break
        need.append(found)
    return need


def test_reference_format_plan_replays_the_reference_refresh_pattern(tmp_path):
    rng = np.random.default_rng(0)
    names = list(P.REFERENCE_NAMES)
    blocks = []
    for _ in range(40):  # random reference plans, each made valid by a full first step
        row = ["full_attn"] + [names[k] for k in rng.integers(0, len(names), 11)]
        blocks.append(row)
    path = tmp_path / "blocks_methods.json"
    path.write_text(json.dumps(blocks))
    plan = P.load_plan(str(path))
    assert plan.layers == 40 and plan.steps == 12
    refresh = {P.MODE_FULL_RESIDUAL, P.MODE_FULL_CFG_RESIDUAL}
    for layer, row in enumerate(blocks):
        got = [plan.modes(t)[layer] in refresh for t in range(plan.steps)]
        assert got == _reference_need_compute_residual(row), row
    assert any(m == P.MODE_FULL_CFG_RESIDUAL for t in range(12) for m in plan.modes(t))
    path.write_text(json.dumps([["full_attn", "residual_window_attn+without_residual"]]))
    with pytest.raises(GenzipError, match="no genzip equivalent"):
        P.load_plan(str(path))
