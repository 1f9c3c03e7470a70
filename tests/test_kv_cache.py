"""``genzip-compile FOLDER --kv-cache``: the prefill/decode graph of a transformers causal LM."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx_ir as ir
import pytest
from tiny_llm import compile_kv_artifact

from genzip.backends.artifact import sha256_file
from genzip.ort_session import run_model
from genzip.tools import compile_cli

LAYERS = 2


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    folder, artifact = compile_kv_artifact(tmp_path_factory.mktemp("kv"), "llama")
    return folder, artifact, json.loads((artifact / "genzip.json").read_text())


def test_graph_io_names_and_dynamic_dims(llama):
    _, _, manifest = llama
    inputs = {s["name"]: s["shape"] for s in manifest["inputs"]}
    outputs = {s["name"]: s["shape"] for s in manifest["outputs"]}
    assert list(inputs)[:3] == ["input_ids", "attention_mask", "position_ids"]
    assert inputs["input_ids"] == ["batch", "seq"] == inputs["position_ids"]
    assert inputs["attention_mask"] == ["batch", "total_seq"]
    for i in range(LAYERS):
        for kv in ("key", "value"):
            assert inputs[f"past_key_values.{i}.{kv}"] == ["batch", 2, "past_seq", 8]
            assert outputs[f"present.{i}.{kv}"] == ["batch", 2, "total_seq", 8]
    assert outputs["logits"][:2] == ["batch", "seq"]
    assert manifest["kv_cache"]["layers"] == LAYERS and manifest["kv_cache"]["kv_heads"] == 2


def test_export_checked_over_prefill_and_decode(llama):
    _, _, manifest = llama
    fid = manifest["export_fidelity"]
    assert "decode steps" in fid["checked"] and fid["cosine"] > 0.99999
    assert manifest["fidelity"]["cosine"] > 0.99999


def test_artifact_carries_tokenizer_and_generation_config(llama):
    folder, artifact, manifest = llama
    files = manifest["kv_cache"]["files"]
    assert {"hf/tokenizer.json", "hf/tokenizer_config.json", "hf/generation_config.json"} <= set(files)
    for rel in files:
        assert sha256_file(str(artifact / rel)) == manifest["files"][rel]
        assert (artifact / rel).read_bytes() == (folder / os.path.basename(rel)).read_bytes()


def test_attention_is_concat_then_onnx_attention(llama):
    """What the exporter emits: each layer's cache update is Concat(past, new) feeding a
    plain ONNX Attention(Q, K, V, mask), with no past_key/past_value inputs on Attention."""
    _, artifact, _ = llama
    model = ir.load(str(artifact / "model.onnx"))
    attention = [n for n in model.graph if n.op_type == "Attention"]
    assert len(attention) == LAYERS
    assert all(len(n.inputs) == 4 for n in attention)
    presents = [v for v in model.graph.outputs if v.name.startswith("present.")]
    assert all(v.producer().op_type == "Concat" for v in presents)


def test_one_graph_prefill_then_decode(llama):
    """Empty past (prefill) and one-token steps run the same graph, and chain."""
    _, artifact, manifest = llama
    path = str(artifact / "model.onnx")
    past = {s["name"]: np.zeros((1, 2, 0, 8), np.float32) for s in manifest["inputs"][3:]}
    ids = np.array([[1, 5, 9]], np.int64)
    out = run_model(path, {"input_ids": ids, "attention_mask": np.ones((1, 3), np.int64),
                           "position_ids": np.arange(3)[None], **past})
    whole = run_model(path, {"input_ids": np.array([[1, 5, 9, 4]], np.int64),
                             "attention_mask": np.ones((1, 4), np.int64), "position_ids": np.arange(4)[None], **past})
    step = run_model(path, {"input_ids": np.array([[4]], np.int64), "attention_mask": np.ones((1, 4), np.int64),
                            "position_ids": np.array([[3]]),
                            **{n: out[n.replace("past_key_values", "present")] for n in past}})
    assert step["present.0.key"].shape == (1, 2, 4, 8)
    np.testing.assert_allclose(step["logits"][0, -1], whole["logits"][0, -1], atol=1e-4)


def test_canonicalize_attn_on_the_kv_graph(llama):
    """The exporter's Attention has no past inputs, so canonicalize-attn takes it; the
    result still reproduces the graph (example inputs carry a 3-token past)."""
    from genzip.passes import build_pipeline, run_pipeline

    _, artifact, _ = llama
    model = ir.load(str(artifact / "model.onnx"))
    with np.load(artifact / "inputs.npz") as data:
        feeds = {k: data[k] for k in data.files}
    before = run_model(model, feeds)
    run_pipeline(model, build_pipeline("canonicalize-attn,dce"))
    after = run_model(model, feeds)
    for name in before:
        np.testing.assert_allclose(after[name], before[name], atol=1e-4)


def test_kv_cache_needs_a_folder(capsys, tmp_path):
    rc = compile_cli.main(["tiny-llama", "--kv-cache", "--out", str(tmp_path / "x"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "--kv-cache needs a local transformers causal-LM folder" in err
    assert not (tmp_path / "x").exists()


def test_kv_cache_attention_is_self_attention(llama):
    """K = Concat(past_key, k_new) reads a graph input Q does not, but the past is the layer's
    own earlier keys: canonicalize-attn still calls it self-attention."""
    from genzip.passes import build_pipeline, run_pipeline

    _, artifact, _ = llama
    model = ir.load(str(artifact / "model.onnx"))
    (record,) = run_pipeline(model, build_pipeline("canonicalize-attn"))
    assert record.stats["self"] == LAYERS and record.stats["cross"] == 0
