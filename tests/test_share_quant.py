"""share-attn on a W8A8 artifact: ``...,quant{scheme=w8a8},share-attn`` (quantize, then share).

The quantized projections (activation Q->DQ, weight DQ of int8 initializers) move into
the compute branch with their weights, so the all-full switch is the quantized model
bit for bit, ORT still fuses every projection into an int8 GEMM, and a plan runs.
The other order (annotate after share-attn) is refused: the projections would stay fp32.
"""

from __future__ import annotations

import collections
import json
import os

import bench_scripts
import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from share_artifacts import compiled

from genzip.errors import GenzipError
from genzip.ort_session import make_session, session_options
from genzip.passes import build_pipeline, run_pipeline
from genzip.runtime import plan as P
from genzip.runtime import sampler
from genzip.runtime.model import PlannedModel

QUANT = "canonicalize-attn,annotate-precision,calibrate,quant{scheme=w8a8}"
SHARE = QUANT + ",share-attn{tokens=32}"
STEPS = 4


@pytest.fixture(scope="module")
def arts(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GENZIP_CACHE_DIR", str(tmp_path_factory.mktemp("calib-cache")))
        return compiled(tmp_path_factory, SHARE), compiled(tmp_path_factory, QUANT), compiled(tmp_path_factory)


def _optimized_ops(folder, tmp_path) -> collections.Counter:
    """(in a branch?, op type) counts of the model as ORT optimizes it."""
    opts = session_options()
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(os.path.join(folder, "model.onnx"), opts, providers=["CPUExecutionProvider"])
    counts: collections.Counter = collections.Counter()

    def walk(graph, nested):
        for node in graph.node:
            counts[(nested, node.op_type)] += 1
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g, True)

    walk(onnx.load(str(tmp_path / "opt.onnx")).graph, False)
    return counts


def test_all_full_equals_quantized_artifact_without_share_attn(arts):
    share, quant, _ = arts
    feeds = dict(np.load(os.path.join(quant, "inputs.npz")))
    ref = make_session(os.path.join(quant, "model.onnx"))
    got = make_session(os.path.join(share, "model.onnx"))
    np.testing.assert_array_equal(got.run(["output"], feeds)[0], ref.run(["output"], feeds)[0])
    base_m, share_m = PlannedModel(quant), PlannedModel(share, P.Plan.all_full(STEPS, 2, 32))
    c, u = sampler.default_conditioning(base_m, 1, seed=0)
    np.testing.assert_array_equal(sampler.sample(share_m, c, u, steps=STEPS, cfg=4.5).latents,
                                  sampler.sample(base_m, c, u, steps=STEPS, cfg=4.5).latents)


def test_projections_stay_int8_gemms_inside_the_branches(arts, tmp_path):
    share, quant, _ = arts
    plain, shared = _optimized_ops(quant, tmp_path), _optimized_ops(share, tmp_path)
    int8 = plain[(False, "MatMulIntegerToFloat")]
    assert int8 > 8
    # 2 layers x (q, k, v, out) moved into the compute branches, still int8 GEMMs there.
    assert shared[(True, "MatMulIntegerToFloat")] == 8
    assert shared[(False, "MatMulIntegerToFloat")] == int8 - 8
    assert shared[(True, "DequantizeLinear")] == 0  # no weight left dequantized to fp32


def test_plan_runs_on_the_quantized_artifact(arts):
    share, _, _ = arts
    plan = P.Plan(STEPS, 2, 32, (("full", "share-step", "window-residual", "share-cfg"),
                                 ("full", "window-residual+share-cfg", "full+share-cfg", "share-step")))
    model = PlannedModel(share, P.Plan.all_full(STEPS, 2, 32))
    c, u = sampler.default_conditioning(model, 1, seed=0)
    full = sampler.sample(model, c, u, steps=STEPS, cfg=4.5).latents
    model.set_plan(plan)
    got = sampler.sample(model, c, u, steps=STEPS, cfg=4.5).latents
    assert np.isfinite(got).all() and not np.array_equal(got, full)
    rel = float(np.abs(got - full).sum() / np.abs(full).sum())
    assert rel < 0.2  # sharing perturbs the trajectory, it does not derail it


def test_bench_share_script(arts, tmp_path):
    """``python benchmarks/bench_share.py``: all four variants, and its refusals (runs side by side)."""
    share_q, _, fp32 = arts
    plan = P.Plan(STEPS, 2, 32, (("full", "share-step", "share-step", "share-cfg"),
                                 ("full", "window-residual", "share-step", "share-step")))
    plan.save(str(tmp_path / "plan.json"))
    args = [fp32, "--plan", str(tmp_path / "plan.json"), "--steps", str(STEPS), "--quiet"]
    runs = [bench_scripts.start(bench_scripts.command("bench_share.py", *args, *more))
            for more in (["--quant", share_q, "--quant-full", "--json"], ["--quant", fp32], ["--steps", "5"])]
    (rc, out, err), (rc_q, _, err_q), (rc_s, _, err_s) = [bench_scripts.finish(r) for r in runs]
    assert rc == 0, err[-3000:]
    out = json.loads(out)
    assert list(out["variants"]) == ["fp32-full", "fp32-plan", "quant-full", "quant-plan"]
    v = out["variants"]
    assert v["fp32-full"]["speedup"] == 1.0 and v["fp32-full"]["psnr_db"] is None
    assert all(v[k]["ms"] > 0 and 10 < v[k]["psnr_db"] < 200 for k in ("fp32-plan", "quant-full", "quant-plan"))
    assert 0.5 < out["attn_flops_saved"] < 1 and len(out["loadavg_before"]) == 3
    # --quant must be a quantized share-attn artifact.
    assert rc_q == 2 and "without a quant pass" in err_q
    assert rc_s == 2 and "plan is for 4 steps" in err_s


def test_quantizing_after_share_attn_is_refused(arts):
    model = ir.load(os.path.join(arts[2], "model.onnx"))
    with pytest.raises(GenzipError, match="after share-attn") as e:
        run_pipeline(model, build_pipeline("annotate-precision"))
    assert "quant{scheme=...},share-attn" in e.value.fix


def test_an_optimized_graph_ort_cannot_reload_is_dropped(arts):
    """ORT 1.32 writes int8 GEMMs inside If branches with duplicate value names; the
    artifact keeps only model.onnx then, says why, and the runtime runs model.onnx."""
    share, quant, _ = arts
    with open(os.path.join(share, "genzip.json")) as f:
        section = json.load(f)["ort"]
    if section["optimized_model"] is not None:
        pytest.skip("this onnxruntime reloads its optimized If branches")
    assert "cannot run its own optimized graph" in section["skipped"]
    assert not os.path.exists(os.path.join(share, "model.ort.onnx"))
    assert PlannedModel(share).model_path == os.path.join(share, "model.onnx")
    assert PlannedModel(quant).model_path == os.path.join(quant, "model.ort.onnx")


@pytest.mark.parametrize("scheme", ["w8a8-dynamic", "w4a8-dynamic"])
def test_per_token_dynamic_projections_share_too(tmp_path_factory, scheme):
    """ViDiT-Q's per-token forms combine with share-attn: each block moves whole, its shared
    q/k/v quantizer included, so the all-full switch is the quantized model bit for bit and an
    ASC step (which computes, and so quantizes, one half) with identical halves equals full."""
    quant = f"canonicalize-attn,annotate-precision{{scheme={scheme}}},quant{{scheme={scheme}}}"
    share, base = compiled(tmp_path_factory, quant + ",share-attn{tokens=32}"), compiled(tmp_path_factory, quant)
    with open(os.path.join(share, "genzip.json")) as f:
        (stats,) = [r["stats"] for r in json.load(f)["pass_stats"] if r["pass"].startswith("share-attn")]
    assert stats["layers"] == 2
    model = ir.load(os.path.join(share, "model.onnx"))
    top = collections.Counter(n.op_type for n in model.graph)
    inner = collections.Counter(n.op_type for n in ir.traversal.RecursiveGraphIterator(model.graph)) - top
    assert inner["MatMulIntegerToFloat"] == 8 and inner["ReduceMax"] == 4  # q/k/v share one quantizer per block
    feeds = dict(np.load(os.path.join(base, "inputs.npz")))
    ref = make_session(os.path.join(base, "model.onnx")).run(["output"], feeds)[0]
    sess = make_session(os.path.join(share, "model.onnx"))
    np.testing.assert_array_equal(sess.run(["output"], feeds)[0], ref)
    same = {k: np.concatenate([v[1:], v[1:]]) for k, v in feeds.items()}
    full = sess.run(["output"], same)[0]
    np.testing.assert_array_equal(sess.run(["output"], {**same, "attn_modes": np.array([4, 4])})[0], full)
