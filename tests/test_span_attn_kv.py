"""``span-attn`` on ``--kv-cache`` graphs: run-time elastic spans, sinks, GQA and an evicting cache,
checked in ORT through the bound cache against transformers eager with a span-attention
reference over a dense cache (prefill + decode steps)."""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir
import pytest
import torch
from tiny_llm import make_folder

import genzip
from genzip.compile import CompileOptions, compile_source
from genzip.errors import GenzipError
from genzip.frontend.loader import load_model
from genzip.passes.attention.span_attn import resolve_span

SEQ = 48  # the tiny Llama's max_position_embeddings
PLAN = {"alphas": [[3, 6, 2, 40], [4, 4, 5, 4]], "betas": [[0.125, 0.0, 0.25, 0.0], [0.1, 0.2, 0.0, 0.2]],
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
    decode steps through the evicting cache equal eager span attention over a dense cache, with
    each KV head's cache holding only sinks + the widest span of its two query heads
    (evict=head, the default; layer 1's KV heads both need 16, so it stays one tensor), or
    every head the layer's widest (evict=layer)."""
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(PLAN))
    lm = _compile(tiny, f"canonicalize-attn,span-attn{{plan={plan_file} seq={SEQ}}}", "plan")
    per_layer = _compile(tiny, f"canonicalize-attn,span-attn{{plan={plan_file} seq={SEQ} evict=layer}}", "plan-l")
    manifest = json.loads((tiny[1] / "plan" / "genzip.json").read_text())
    assert "evicting cache" in manifest["genai"]["why_not"]  # onnxruntime-genai cannot bind it
    # layer 0: KV head 0 serves heads 0, 1 (spans up to round(3 + 48/8) = 9, 6) -> 2 + 9 = 11;
    # KV head 1 serves heads 2, 3 (14, 40) -> 42. layer 1: heads 0, 1 (9, 14) -> 16; heads 2, 3 (5, 14) -> 16.
    keep = {s.past: (s.keep, s.heads) for s in lm.slots}
    assert keep == {**{f"past_key_values.0.h{g}.{kv}": (cap, 1) for g, cap in enumerate((11, 42))
                       for kv in ("key", "value")},
                    "past_key_values.1.key": (16, 2), "past_key_values.1.value": (16, 2)}
    # The per-head Attention nodes stay canonical (fact attention-canonical) for later passes.
    from genzip.passes.attention._facts import canonical_problem

    split = ir.load(str(tiny[1] / "plan" / "model.onnx"))  # the saved graph (model.ort.onnx is ORT-optimized)
    assert canonical_problem(split) is None and sum(n.op_type == "Attention" for n in split.graph) == 3
    keep = {s.past: s.keep for s in per_layer.slots}
    assert keep["past_key_values.0.key"] == 42 and keep["past_key_values.1.value"] == 16
    ids = np.random.default_rng(0).integers(3, lm.spec["vocab_size"], (1, 46))
    want = _span_reference(str(tiny[0]), PLAN, ids, prefill=10)
    np.testing.assert_allclose(_ours(lm, ids, prefill=10), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(_ours(per_layer, ids, prefill=10), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(lm.score(ids, chunk=5), want, rtol=1e-4, atol=1e-4)
    gen, gen_layer = (m.generate(ids[:, :12], max_new_tokens=30) for m in (lm, per_layer))
    np.testing.assert_array_equal(gen.sequences, gen_layer.sequences)
    pair = np.concatenate([ids[:, :10], ids[:, 20:30]])  # batch 2 through the split caches: each row as if alone
    both = lm.generate(pair, max_new_tokens=20, eos_token_id=[]).sequences
    rows = [per_layer.generate(pair[i:i + 1], max_new_tokens=20, eos_token_id=[]).sequences for i in range(2)]
    np.testing.assert_array_equal(both, np.concatenate(rows))
    # K and V, head_dim 8, float32, per KV head: 11 + 42 (layer 0) + 16 + 16 (layer 1) tokens;
    # per layer: 2 heads x (42 + 16); dense: 2 heads x (48 + 48).
    assert gen.kv_bytes == 2 * 8 * 4 * (11 + 42 + 16 + 16) < gen_layer.kv_bytes == 2 * 8 * 4 * 2 * (42 + 16)


def test_uniform_rule_with_eviction_matches_reference(tiny):
    """One rule for every head (span = 3 + N/8, sinks 2, capacity 11 of 48); scoring in
    chunks of 7 (prefills that evict mid-chunk) equals one token per step."""
    rule = "alpha=3 beta=0.125 sinks=2"
    lm = _compile(tiny, f"canonicalize-attn,span-attn{{{rule} seq={SEQ}}}", "uniform")
    assert {s.keep for s in lm.slots} == {2 + resolve_span(3, 0.125, SEQ, 2)} == {11}
    # Every head on one rule: every KV head's capacity is the layer's, so no layer is split.
    assert {s.heads for s in lm.slots} == {2} and {s.past for s in lm.slots} == {
        f"past_key_values.{i}.{kv}" for i in (0, 1) for kv in ("key", "value")}
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
    with pytest.raises(GenzipError, match="run kv-quant before span-attn"):
        _compile(tiny, f"canonicalize-attn,span-attn{{alpha=4 beta=0.25 seq={SEQ}}},kv-quant", "kv8-after")
    with pytest.raises(GenzipError, match="evict=row must be head or layer"):
        _compile(tiny, f"canonicalize-attn,span-attn{{alpha=4 beta=0.25 seq={SEQ} evict=row}}", "badevict")


def test_span_attn_on_int8_cache(tiny, tmp_path):
    """kv-quant then span-attn (MoA + KV8): the int8 rows and their scales are evicted per KV
    head; with spans covering everything it equals kv-quant alone, and per KV head it equals
    the per-layer form (the same int8 rows reach each head's spans either way)."""
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(PLAN))
    kv8 = _compile(tiny, "kv-quant", "kv8")
    wide = _compile(tiny, f"canonicalize-attn,kv-quant,span-attn{{alpha=1000 beta=0 sinks=0 seq={SEQ}}}", "kv8-wide")
    head = _compile(tiny, f"canonicalize-attn,kv-quant,span-attn{{plan={plan_file} seq={SEQ}}}", "kv8-head")
    layer = _compile(tiny, f"canonicalize-attn,kv-quant,span-attn{{plan={plan_file} seq={SEQ} evict=layer}}",
                     "kv8-layer")
    slots = {s.past: (s.dtype, s.heads, s.keep) for s in head.slots}
    assert slots["past_key_values.0.h1.key"] == (np.int8, 1, 42)
    assert slots["past_key_values.0.h0.value_scale"] == (np.float32, 1, 11)
    assert slots["past_key_values.1.key_scale"] == (np.float32, 2, 16)
    ids = np.random.default_rng(3).integers(3, kv8.spec["vocab_size"], (1, 40))
    np.testing.assert_allclose(wide.score(ids, chunk=9), kv8.score(ids, chunk=9), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(head.score(ids, chunk=9), layer.score(ids, chunk=9), rtol=1e-5, atol=1e-5)
    gen = head.generate(ids[:, :10], max_new_tokens=30, eos_token_id=[])
    # per KV head and token: 8 int8 + one float32 scale, K and V: 11 + 40 (42, but generate()
    # sizes for 40 tokens) in layer 0, 2 x 16 in layer 1
    assert gen.kv_bytes == 2 * (8 + 4) * (11 + 40 + 2 * 16)
