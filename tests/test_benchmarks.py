"""benchmarks/: each script runs as ``python benchmarks/bench_X.py ... --json`` on a tiny preset.

The scripts live outside the package and are run in subprocesses, the way the README
reproductions run them. Every run a selected test needs starts when the first of them
does (bench_quant and bench_mixed each export a preset, tens of seconds), so they
overlap instead of queueing; bench_share times the share-attn artifact that the
share-attn and runtime tests compile once per session (``share_artifacts``).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os

import bench_scripts
import pytest
from share_artifacts import SHARE_SPEC, compiled

from genzip.runtime import plan as P

STEPS = 2
QUANT_VARIANTS = ("fp32", "genzip-w8a8", "genzip-w8a8-dynamic", "ort-dynamic")


def _jobs() -> dict[str, list[str]]:
    c = bench_scripts.command
    return {
        "quant": c("bench_quant.py", "tiny-pixart", "--variants", ",".join(QUANT_VARIANTS), "--repeat", "1",
                   "--warmup", "0", "--samples", "2", "--json"),
        "quant-unknown": c("bench_quant.py", "tiny-pixart", "--variants", "fp32,int3"),
        "mixed": c("bench_mixed.py", "tiny-llama", "--samples", "1", "--heldout", "1", "--random", "2", "--json"),
        "attention-tokens": c("bench_attention.py", "--seq", "64", "--heads", "2", "--dim", "8", "--window", "8",
                              "--repeat", "2", "--json"),
        "attention-fraction": c("bench_attention.py", "--seq", "32", "--heads", "1", "--dim", "8", "--window", "0.25",
                                "--repeat", "1", "--json"),
        "attention-bad": c("bench_attention.py", "--seq", "32", "--window", "0.5x"),
        "triton-no-cuda": c("bench_triton.py", "--seq", "128"),
    }


# test -> the runs it waits on (each run belongs to one test)
NEEDS = {
    "test_bench_quant_json": ["quant"],
    "test_bench_quant_rejects_unknown_variant": ["quant-unknown"],
    "test_bench_mixed_json": ["mixed"],
    "test_bench_attention_json": ["attention-tokens", "attention-fraction", "attention-bad"],
    "test_bench_triton_without_cuda_exits_2_naming_the_fix": ["triton-no-cuda"],
}


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _cuda_and_triton() -> str | None:
    """None when bench_triton can run here, else why not."""
    if not _cuda():
        return "no CUDA GPU is visible"
    return None if importlib.util.find_spec("triton") else "triton is not installed (pip install 'genzip[gpu]')"


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return str(tmp_path_factory.mktemp("benchmarks"))


@pytest.fixture(scope="module")
def env(tmp):
    return {"GENZIP_CACHE_DIR": os.path.join(tmp, "calib-cache")}


@pytest.fixture(scope="module")
def jobs(request, tmp, env):
    selected = {getattr(item, "originalname", item.name) for item in request.session.items
                if getattr(item, "module", None) is request.module}
    argv = _jobs()
    if _cuda():
        selected.discard("test_bench_triton_without_cuda_exits_2_naming_the_fix")
    names = sorted({name for test in selected for name in NEEDS.get(test, ())})
    procs = {name: bench_scripts.start(argv[name], env) for name in names}
    yield procs
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _json(jobs, name: str):
    rc, out, err = bench_scripts.finish(jobs[name])
    assert rc == 0, err[-3000:]
    return json.loads(out)


def test_bench_quant_json(jobs):
    """genzip variants compiled into real ort artifacts and timed through the runner, next to ORT's peers."""
    result = _json(jobs, "quant")
    assert result["model"] == "tiny-pixart" and result["repeat"] == 1
    rows = {r["variant"]: r for r in result["rows"]}
    assert list(rows) == list(QUANT_VARIANTS)
    assert rows["fp32"]["speedup"] == 1.0 and rows["fp32"]["speedup_min"] == 1.0
    assert rows["fp32"]["cosine"] == pytest.approx(1.0) and rows["fp32"]["max_abs_err"] == 0.0
    assert rows["genzip-w8a8"]["cosine"] > 0.999 and rows["genzip-w8a8-dynamic"]["cosine"] > 0.999
    assert rows["ort-dynamic"]["cosine"] > 0.9
    for r in rows.values():
        assert r["median_ms"] > 0 and r["min_ms"] > 0 and r["build_s"] >= 0
        # The ratios are the fp32 figure over the variant's, as printed.
        assert 0 < r["speedup"] < 100 and 0 < r["speedup_min"] < 100
        assert r["speedup"] == pytest.approx(rows["fp32"]["median_ms"] / r["median_ms"], rel=0.01, abs=0.002)
        assert math.isfinite(r["max_abs_err"]) and r["max_abs_err"] >= 0
    # Each genzip variant runs the file the artifact runner picked, and says why.
    for v in ("genzip-w8a8", "genzip-w8a8-dynamic"):
        assert rows[v]["model_file"] in ("model.ort.onnx", "model.onnx")
        assert rows[v]["model_file_why"].startswith("model.ort.onnx" if rows[v]["model_file"] == "model.ort.onnx"
                                                    else ("no ", "model.ort.onnx "))
    assert rows["fp32"]["model_file"] == "fp32.onnx" and rows["ort-dynamic"]["model_file"] == "ort-dynamic.onnx"


def test_bench_quant_rejects_unknown_variant(jobs):
    rc, _, err = bench_scripts.finish(jobs["quant-unknown"])
    assert rc == 2 and "int3" in err and "must include fp32" in err


def test_bench_mixed_json(jobs):
    result = _json(jobs, "mixed")
    assert result["model"] == "tiny-llama" and result["formats"] == ["w4a16", "w8a8"]
    assert result["layers"] > 0 and result["heldout_samples"] == 1 and result["sensitivity_runs"] > 0
    assert 4 < result["budget_bits"] < 8
    rows = {r["allocation"]: r for r in result["rows"]}
    assert {"naive (first/last quarter 8-bit)", "random (mean of 2)", "milp (objective=auto)"} <= set(rows)
    for label, r in rows.items():
        # Every allocation spends at most the naive rule's budget (the MILP and random ones are capped by it).
        assert r["avg_weight_bits"] <= result["budget_bits"] + 1e-3, label
        assert 0 <= r["n_high"] <= result["layers"]
        assert r["kl"] >= 0 and math.isfinite(r["sqnr"]) and math.isfinite(r["predicted"]), label
    assert rows["naive (first/last quarter 8-bit)"]["avg_weight_bits"] == pytest.approx(result["budget_bits"], abs=1e-3)


def test_bench_attention_json(jobs):
    result = _json(jobs, "attention-tokens")
    assert {"dense_ms", "window_ms", "speedup", "flop_bound"} <= result.keys()
    assert result["flop_bound"] == pytest.approx(64 * 64 / (64 * 17 - 8 * 9), rel=1e-3)
    # speedup is dense / window before the ms are rounded to 3 decimals (tiny shapes: hundredths of a ms).
    d, w = result["dense_ms"], result["window_ms"]
    assert (d - 5e-4) / (w + 5e-4) - 1e-3 <= result["speedup"] <= (d + 5e-4) / max(w - 5e-4, 1e-9) + 1e-3
    assert result["efficiency"] == pytest.approx(result["speedup"] / result["flop_bound"], rel=0.01, abs=2e-3)
    printed = _json(jobs, "attention-fraction")
    assert printed["window"] == 8 and printed["speedup"] > 0 and printed["dense_ms"] > 0
    rc, _, err = bench_scripts.finish(jobs["attention-bad"])
    assert rc == 2 and "--window 0.125" in err


def test_bench_share_json(tmp, env, tmp_path_factory):
    # The FP32 share-attn tiny-pixart artifact the share-attn / runtime tests compile (once per session).
    share = compiled(tmp_path_factory, SHARE_SPEC)
    plan = P.Plan(STEPS, 2, 32, (("full", "share-step"), ("full", "window-residual")))
    plan_path = os.path.join(tmp, "plan.json")
    plan.save(plan_path)
    rc, out, err = bench_scripts.run("bench_share.py", share, "--plan", plan_path, "--steps", STEPS, "--json",
                                     "--quiet", env=env)
    assert rc == 0, err[-3000:]
    result = json.loads(out)
    v = result["variants"]
    assert list(v) == ["fp32-full", "fp32-plan"] and result["steps"] == STEPS and result["repeat"] == 1
    assert v["fp32-full"]["speedup"] == 1.0 and v["fp32-full"]["psnr_db"] is None
    assert v["fp32-plan"]["ms"] > 0 and 0 < v["fp32-plan"]["speedup"] < 100 and 10 < v["fp32-plan"]["psnr_db"] < 200
    assert v["fp32-plan"]["speedup"] == pytest.approx(v["fp32-full"]["ms"] / v["fp32-plan"]["ms"], rel=1e-6)
    assert 0 < result["attn_flops_saved"] < 1 and len(result["loadavg_before"]) == 3


def test_bench_triton_json():
    why = _cuda_and_triton()
    if why is not None:
        pytest.skip(f"bench_triton needs CUDA and triton: {why}")
    rc, out, err = bench_scripts.run("bench_triton.py", "--seq", "1024", "--repeat", "3", "--json")
    assert rc == 0, err[-3000:]
    (result,) = [json.loads(line) for line in out.splitlines()]
    assert result["op"] == "window" and result["window"] == 128
    assert result["dense_ms"] > 0 and result["triton_ms"] > 0 and result["speedup"] > 0
    assert result["flop_bound"] == pytest.approx(1024 * 1024 / (1024 * 257 - 128 * 129), rel=1e-3)


def test_bench_triton_without_cuda_exits_2_naming_the_fix(jobs):
    if _cuda():
        pytest.skip("this machine has CUDA; test_bench_triton_json runs the benchmark")
    rc, _, err = bench_scripts.finish(jobs["triton-no-cuda"])
    assert rc == 2 and "needs a CUDA GPU" in err and "genzip[gpu]" in err
