"""``ort-gqa``: a --kv-cache graph's attention as com.microsoft.GroupQueryAttention on one shared
past/present buffer; generate() and onnxruntime-genai's loop equal transformers greedy."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import onnx_ir as ir
import pytest
import torch
from tiny_llm import genai_greedy, make_folder

import genzip
from genzip.errors import GenzipError
from genzip.passes.infra.context import PassContext
from genzip.passes.infra.registry import get_pass_class


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(transformers eager Llama, its plain --kv-cache CausalLM, its ort-gqa CausalLM, the ort-gqa artifact),
    both artifacts compiled from one export."""
    import transformers

    from genzip.compile import CompileOptions, compile_source
    from genzip.frontend.loader import load_model

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("gqa")
    folder = make_folder(root, "llama")
    source = load_model(str(folder), kv_cache=True)
    lms = {}
    for name, passes in (("plain", ""), ("gqa", "ort-gqa")):
        copy = dataclasses.replace(source, model=ir.from_proto(ir.to_proto(source.model)))
        compile_source(copy, str(root / name), CompileOptions(target="ort", passes=passes))
        lms[name] = genzip.load(str(root / name), threads=2)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return hf, lms["plain"], lms["gqa"], root / "gqa"


def _hf_greedy(hf, ids: np.ndarray, n: int) -> np.ndarray:
    with torch.no_grad():
        return hf.generate(torch.from_numpy(ids), attention_mask=torch.ones_like(torch.from_numpy(ids)),
                           max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0).numpy()


def test_graph_has_group_query_attention_and_no_cache_copy(pair):
    _, _, lm, artifact = pair
    model = ir.load(str(artifact / "model.onnx"))
    ops = [(n.domain, n.op_type) for n in model.graph]
    assert ops.count(("com.microsoft", "GroupQueryAttention")) == lm.spec["layers"]
    assert ("", "Attention") not in ops  # and no node copies the cache:
    assert not any(n.op_type == "Concat" and any((i.name or "").startswith("past_key_values.") for i in n.inputs)
                   for n in model.graph)
    assert "kv-shared-buffer" in model.metadata_props["genzip.facts"] and lm.shared_kv


@pytest.mark.parametrize("ids", [[[1, 5, 9, 12, 3]], [[4, 7, 2], [9, 9, 1]]])
def test_greedy_equals_transformers_and_plain_graph(pair, ids):
    hf, plain, lm, _ = pair
    ids = np.array(ids, np.int64)
    got = lm.generate(ids, max_new_tokens=16, eos_token_id=[])
    np.testing.assert_array_equal(got.sequences, _hf_greedy(hf, ids, 16))
    # chunked prefill (several rows, a chunk after a past) gives the same tokens
    np.testing.assert_array_equal(lm.generate(ids, max_new_tokens=16, eos_token_id=[], prefill_chunk=2).sequences,
                                  got.sequences)
    dense = plain.generate(ids, max_new_tokens=16, eos_token_id=[])
    assert got.peak_kv_bytes == got.kv_bytes == dense.kv_bytes == dense.peak_kv_bytes // 2  # no ping-pong


def test_shared_buffer_is_written_in_place(pair):
    """One buffer per cache tensor, bound as past and present; its filled rows are the plain graph's present."""
    _, plain, lm, _ = pair
    ids = np.array([[1, 5, 9, 4, 7, 3]], np.int64)
    cache = lm.new_cache(1, 10)
    pointers = [b.ctypes.data for side in cache._bufs for b in side]
    lm._step(cache, ids[:, :4])
    lm._step(cache, ids[:, 4:5])
    lm._step(cache, ids[:, 5:6])
    assert len(cache._bufs) == 1 and [b.ctypes.data for side in cache._bufs for b in side] == pointers
    ref = plain.new_cache(1, 10)
    plain._step(ref, ids)
    for j in range(len(lm.slots)):
        np.testing.assert_allclose(cache.layer(j), ref.layer(j), atol=1e-5)
    scored = lm.score(ids, chunk=1)
    np.testing.assert_allclose(scored, plain.score(ids, chunk=1), atol=1e-4)


def test_onnxruntime_genai_runs_it_with_a_shared_buffer(pair):
    og = pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai is the [bench]/[dev] extra")
    hf, _, _, artifact = pair
    config = json.loads((artifact / "genai_config.json").read_text())
    assert config["search"]["past_present_share_buffer"] is True
    ids = np.array([[1, 5, 9, 12, 3]], np.int64)
    np.testing.assert_array_equal(genai_greedy(og, artifact, ids, 12), _hf_greedy(hf, ids, 12))


def test_refusals_are_one_line(pair):
    _, _, _, artifact = pair
    lowered = ir.load(str(artifact / "model.onnx"))
    with pytest.raises(GenzipError, match="no canonical cached attention"):
        get_pass_class("ort-gqa")()(lowered)  # twice: no Concat cache left
    with pytest.raises(GenzipError, match="kv-quant"):
        get_pass_class("kv-quant")()(lowered)
    # a sliding-window model: its window is in the mask ort-gqa would drop
    mistral = SimpleNamespace(config=SimpleNamespace(sliding_window=16, max_position_embeddings=48))
    with pytest.raises(GenzipError, match="sliding window of 16 tokens"):
        get_pass_class("ort-gqa")()(ir.load(str(artifact / "model.onnx")), PassContext(torch_module=mistral))
