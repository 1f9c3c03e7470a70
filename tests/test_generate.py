"""``genzip.load(kv_artifact).generate`` and ``genzip generate``: greedy equals transformers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tiny_llm import compile_kv_artifact, genai_greedy

import genzip
from genzip.errors import GenzipError
from genzip.runtime._kv_cache import BoundKVCache
from genzip.runtime.generate import CausalLM
from genzip.tools import genzip_cli


@pytest.fixture(scope="module", params=["llama", "qwen2", "mistral"])
def pair(request, tmp_path_factory):
    """(transformers eager model, genzip CausalLM) of the same folder."""
    import transformers

    folder, artifact = compile_kv_artifact(tmp_path_factory.mktemp(request.param), request.param)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return hf, genzip.load(str(artifact), threads=2), artifact


def _hf_greedy(hf, ids: np.ndarray, n: int) -> np.ndarray:
    with torch.no_grad():
        return hf.generate(torch.from_numpy(ids), attention_mask=torch.ones_like(torch.from_numpy(ids)),
                           max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0).numpy()


@pytest.mark.parametrize("ids", [[[1, 5, 9, 12, 3]], [[4, 7, 2], [9, 9, 1]]])
def test_greedy_equals_transformers(pair, ids):
    hf, model, _ = pair
    ids = np.array(ids, np.int64)
    got = model.generate(ids, max_new_tokens=16, eos_token_id=[])
    want = _hf_greedy(hf, ids, 16)
    np.testing.assert_array_equal(got.sequences, want)
    assert len(set(want[0, ids.shape[1]:].tolist())) > 1  # the check sees more than one repeated token


def test_text_prompt_uses_the_artifact_tokenizer(pair):
    hf, model, _ = pair
    gen = model.generate("the quick brown fox", max_new_tokens=6, eos_token_id=[])
    ids = np.array([model.tokenizer("the quick brown fox")["input_ids"]], np.int64)
    np.testing.assert_array_equal(gen.sequences, _hf_greedy(hf, ids, 6))
    assert gen.text == [model.tokenizer.decode(gen.sequences[0, ids.shape[1]:], skip_special_tokens=True)]
    assert gen.prefill_s > 0 and gen.decode_tokens_per_s > 0


def test_eos_stops_and_sampling_is_seeded(pair):
    _, model, _ = pair
    ids = np.array([[1, 5, 9]], np.int64)
    first = int(model.generate(ids, max_new_tokens=1).sequences[0, -1])
    assert model.generate(ids, max_new_tokens=8, eos_token_id=first).new_tokens == 1
    a = model.generate(ids, max_new_tokens=8, do_sample=True, top_k=5, top_p=0.9, temperature=0.8, seed=3,
                       eos_token_id=[])
    b = model.generate(ids, max_new_tokens=8, do_sample=True, top_k=5, top_p=0.9, temperature=0.8, seed=3,
                       eos_token_id=[])
    np.testing.assert_array_equal(a.sequences, b.sequences)
    greedy = model.generate(ids, max_new_tokens=8, eos_token_id=[])
    top1 = model.generate(ids, max_new_tokens=8, do_sample=True, top_k=1, seed=5, eos_token_id=[])
    np.testing.assert_array_equal(top1.sequences, greedy.sequences)


def test_cache_is_bound_in_place(pair):
    """ORT writes present into the preallocated buffer; the ping-pong past is what session.run gives."""
    _, model, _ = pair
    spec = model.spec
    cache = model.new_cache(1, 8)
    assert isinstance(cache, BoundKVCache)
    buffers = [b.ctypes.data for side in cache._bufs for b in side]
    ids = np.array([[1, 5, 9]], np.int64)
    model._step(cache, ids)
    model._step(cache, np.array([[4]], np.int64))
    assert [b.ctypes.data for side in cache._bufs for b in side] == buffers  # never reallocated
    past = {s.past: np.zeros((1, spec["kv_heads"], 0, spec["head_dim"]), np.float32) for s in model.slots}
    ref = model(input_ids=np.array([[1, 5, 9, 4]], np.int64), attention_mask=np.ones((1, 4), np.int64),
                position_ids=np.arange(4)[None], **past)
    np.testing.assert_allclose(cache.layer(0), ref["present.0.key"], atol=1e-5)
    assert cache.peak_bytes == 2 * cache.bytes == 2 * 2 * spec["layers"] * spec["kv_heads"] * 8 * spec["head_dim"] * 4


def _cli(capsys, *argv):
    rc = genzip_cli.main(["generate", *argv, "--quiet"])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_cli_prints_text_and_timings(pair, capsys):
    _, model, artifact = pair
    rc, out, _ = _cli(capsys, str(artifact), "--prompt", "the lazy dog", "--max-new-tokens", "5", "--json")
    result = json.loads(out)
    assert rc == 0 and result["new_tokens"] <= 5 and result["peak_kv_bytes"] > 0
    assert {"text", "prefill_s", "decode_tokens_per_s"} <= set(result)
    rc, out, _ = _cli(capsys, str(artifact), "--prompt", "the lazy dog", "--max-new-tokens", "3")
    assert rc == 0 and "prefill:" in out and "tokens/s" in out and "peak KV cache:" in out


def test_cli_one_line_errors(pair, capsys, tmp_path):
    _, model, artifact = pair
    long = ",".join(["5"] * model.spec["max_positions"])
    for argv, words in [
        ([str(artifact), "--input-ids", long, "--max-new-tokens", "1"], "exceeds the model's 48 positions"),
        ([str(artifact), "--input-ids", "1,2,999"], "outside the vocabulary"),
    ]:
        rc, _, err = _cli(capsys, *argv)
        assert rc == 2 and err.count("\n") == 1 and words in err, err
    other = tmp_path / "not_llm"
    other.mkdir()
    (other / "genzip.json").write_text(json.dumps({"files": {}, "model": "model.onnx", "inputs": []}))
    rc, _, err = _cli(capsys, str(other), "--prompt", "x")
    assert rc == 2 and "not a KV-cache LLM artifact" in err
    with pytest.raises(GenzipError, match="not a KV-cache LLM"):
        CausalLM(str(other))


def test_onnxruntime_genai_runs_the_artifact(pair):
    """genai_config.json lets onnxruntime-genai's C++ loop run genzip's graph: its greedy tokens
    equal transformers' (its tokenizer cannot read this word-level toy tokenizer; trained-llama's
    BPE one is checked in test_decode_quant)."""
    og = pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai is the [bench]/[dev] extra")
    hf, _, artifact = pair
    manifest = json.loads((artifact / "genzip.json").read_text())
    assert manifest["genai"]["config"] == "genai_config.json" and "genai_config.json" in manifest["files"]
    ids = np.array([[1, 5, 9, 12, 3]], np.int64)
    np.testing.assert_array_equal(genai_greedy(og, artifact, ids, 12), _hf_greedy(hf, ids, 12))


def test_fp16_kv_cache_artifact_generates_like_fp32(tmp_path):
    """--dtype fp16 with --kv-cache: fp16 cache and logits bound as the graph declares them,
    greedy tokens equal transformers' fp32 ones on the tiny Llama, half the cache bytes."""
    import transformers
    from tiny_llm import make_folder

    from genzip.compile import CompileOptions, compile_model

    folder = make_folder(tmp_path, "llama")
    out = tmp_path / "llama.f16"
    compile_model(str(folder), str(out), CompileOptions(target="ort", kv_cache=True, dtype="fp16"))
    lm = genzip.load(str(out), threads=2)
    assert {s.dtype for s in lm.slots} == {np.float16}
    ids = np.array([[1, 5, 9, 12, 3]], np.int64)
    got = lm.generate(ids, max_new_tokens=12, eos_token_id=[])
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    np.testing.assert_array_equal(got.sequences, _hf_greedy(hf, ids, 12))
    spec = lm.spec  # 2 (key, value) x 2 (ping-pong) x layers x kv_heads x capacity x head_dim x 2 bytes
    assert got.peak_kv_bytes == 2 * 2 * spec["layers"] * spec["kv_heads"] * 17 * spec["head_dim"] * 2
