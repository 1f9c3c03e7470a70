"""``span-attn`` on ``--kv-cache`` graphs: run-time elastic spans, sinks, GQA and an evicting cache,
checked in ORT through the bound cache against transformers eager with a span-attention
reference over a dense cache (prefill + decode steps)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tiny_llm import make_folder

import genzip
from genzip.compile import CompileOptions, compile_source
from genzip.errors import GenzipError
from genzip.frontend.loader import load_model
from genzip.passes.attention.span_attn import resolve_span

SEQ = 48  # the tiny Llama's max_position_embeddings
PLAN = {"alphas": [[3, 6, 2, 40], [4, 4, 5, 2]], "betas": [[0.125, 0.0, 0.25, 0.0], [0.1, 0.2, 0.0, 0.05]],
        "sinks": 2}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("span_kv")
    folder = make_folder(root, "llama")
    return folder, root, load_model(str(folder), kv_cache=True)


def _compile(tiny, passes: str, name: str):
    _, root, source = tiny
    copy = source.copy()
    compile_source(copy, str(root / name), CompileOptions(target="ort", passes=passes, min_cosine=0.0))
    return genzip.load(str(root / name), threads=2)


def _span_reference(folder, plan: dict, ids: np.ndarray, prefill: int) -> np.ndarray:
    """Eager transformers logits, prefill then one token per step, with every attention
    replaced by span attention over the full (dense) cache, each query's span taken at
    its own length."""
    from transformers import AttentionInterface, AutoModelForCausalLM, DynamicCache

    def span_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        heads, seq, total = query.shape[1], query.shape[2], key.shape[2]
        group = heads // key.shape[1]
        key, value = key.repeat_interleave(group, 1), value.repeat_interleave(group, 1)
        rule = list(zip(plan["alphas"][module.layer_idx], plan["betas"][module.layer_idx]))
        # Each query's span at its own length (position + 1), as when it is decoded.
        spans = torch.tensor([[resolve_span(a, b, n, plan["sinks"]) for n in range(total - seq + 1, total + 1)]
                              for a, b in rule])[:, :, None]
        pq = torch.arange(total - seq, total)[:, None]
        pk = torch.arange(total)[None]
        ok = (pk <= pq) & ((pk < plan["sinks"]) | (pq - pk < spans))
        scores = (query @ key.transpose(2, 3)) * scaling
        weights = scores.masked_fill(~ok, float("-inf")).softmax(-1)
        return (weights @ value).transpose(1, 2).contiguous(), weights

    AttentionInterface.register("genzip_span_reference", span_attention)
    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="genzip_span_reference").eval()
    cache, out, ids_t = DynamicCache(), [], torch.from_numpy(ids)
    with torch.no_grad():
        for start, stop in [(0, prefill)] + [(i, i + 1) for i in range(prefill, ids.shape[1])]:
            res = model(input_ids=ids_t[:, start:stop], past_key_values=cache, use_cache=True,
                        position_ids=torch.arange(start, stop)[None])
            out.append(res.logits.numpy())
    return np.concatenate(out, axis=1)


def _ours(lm, ids: np.ndarray, prefill: int) -> np.ndarray:
    cache = lm.new_cache(1, ids.shape[1])
    out = [lm._step(cache, ids[:, :prefill], all_positions=True).copy()]
    out += [lm._step(cache, ids[:, i:i + 1], all_positions=True).copy() for i in range(prefill, ids.shape[1])]
    return np.concatenate(out, axis=1)


def test_evicting_cache_matches_span_reference(tiny, tmp_path):
    """Per-head plan (GQA: 4 query heads over 2 KV heads, sinks 2): a 10-token prefill and 36
    decode steps through the evicting cache equal eager span attention over a dense cache, and
    each layer's cache holds only sinks + its widest span."""
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(PLAN))
    lm = _compile(tiny, f"canonicalize-attn,span-attn{{plan={plan_file} seq={SEQ}}}", "plan")
    manifest = json.loads((tiny[1] / "plan" / "genzip.json").read_text())
    assert "evicting cache" in manifest["genai"]["why_not"]  # onnxruntime-genai cannot bind it
    keep = {s.past: s.keep for s in lm.slots}
    # layer 0: head 3 has span 40 (alpha) -> 42; layer 1: head 1 reaches round(4 + 0.2·48) = 14 -> 16
    assert keep["past_key_values.0.key"] == 42 and keep["past_key_values.1.value"] == 16
    ids = np.random.default_rng(0).integers(3, lm.spec["vocab_size"], (1, 46))
    got = _ours(lm, ids, prefill=10)
    want = _span_reference(str(tiny[0]), PLAN, ids, prefill=10)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    gen = lm.generate(ids[:, :12], max_new_tokens=30)
    # K and V, 2 KV heads, head_dim 8, float32: 42 tokens kept in layer 0, 16 in layer 1 (dense: 42 + 42)
    assert gen.kv_bytes == 2 * 2 * 8 * 4 * (42 + 16) < 2 * 2 * 8 * 4 * (42 + 42)


def test_uniform_rule_with_eviction_matches_reference(tiny):
    """One rule for every head (span = 3 + N/8, sinks 2, capacity 11 of 48); scoring in
    chunks of 7 (prefills that evict mid-chunk) equals one token per step."""
    rule = "alpha=3 beta=0.125 sinks=2"
    lm = _compile(tiny, f"canonicalize-attn,span-attn{{{rule} seq={SEQ}}}", "uniform")
    assert {s.keep for s in lm.slots} == {2 + resolve_span(3, 0.125, SEQ, 2)} == {11}
    plan = {"alphas": [[3.0] * 4] * 2, "betas": [[0.125] * 4] * 2, "sinks": 2}
    ids = np.random.default_rng(1).integers(3, lm.spec["vocab_size"], (1, 40))
    want = _span_reference(str(tiny[0]), plan, ids, 16)
    np.testing.assert_allclose(_ours(lm, ids, prefill=16), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(lm.score(ids, chunk=7), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(lm.score(ids, chunk=1), want, rtol=1e-4, atol=1e-4)
    pair = np.concatenate([ids[:, :10], ids[:, 20:30]])  # batch 2: each row as if alone
    both = lm.generate(pair, max_new_tokens=30, eos_token_id=[]).sequences
    rows = [lm.generate(pair[i:i + 1], max_new_tokens=30, eos_token_id=[]).sequences for i in range(2)]
    np.testing.assert_array_equal(both, np.concatenate(rows))


def test_span_covering_everything_is_dense(tiny):
    """Spans that cover the sequence: generate() gives the dense model's tokens and logits."""
    dense = _compile(tiny, "", "dense")
    wide = _compile(tiny, f"canonicalize-attn,span-attn{{alpha=1000 beta=0 sinks=0 seq={SEQ}}}", "wide")
    ids = np.random.default_rng(2).integers(3, dense.spec["vocab_size"], (1, 12))
    a, b = dense.generate(ids, max_new_tokens=30), wide.generate(ids, max_new_tokens=30)
    np.testing.assert_array_equal(a.sequences, b.sequences)
    np.testing.assert_allclose(_ours(wide, a.sequences, 7), _ours(dense, a.sequences, 7), rtol=1e-5, atol=1e-5)


def test_kv_cache_errors_are_one_line(tiny):
    with pytest.raises(GenzipError, match="needs seq=N"):
        _compile(tiny, "canonicalize-attn,span-attn{alpha=4 beta=0.25}", "noseq")
    with pytest.raises(GenzipError, match="not Concat"):
        _compile(tiny, f"canonicalize-attn,kv-quant,span-attn{{alpha=4 beta=0.25 seq={SEQ}}}", "kv8")
