"""canonicalize-attn on graphs Optimum exported (tests/fixtures/optimum, in ONNX's text format,
written by its make_optimum_fixtures.py in a separate environment: optimum-onnx needs
transformers < 4.58).

These keep batch, sequence and past-sequence axes dynamic, so ONNX's shape inference names
each unknown dim afresh; the attention chains are recognised only once ORT's symbolic
inference names them (passes/attention/_symbolic_shapes.py). The rewritten graph must compute
what Optimum's did at sizes other than any traced one, and still take every size.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from genzip.frontend.onnx_inputs import synthesize_inputs
from genzip.passes.attention import _flops as af
from genzip.passes.attention.canonicalize_attn import CanonicalizeAttentionPass
from genzip.tools import compile_cli

FIXTURES = Path(__file__).parent / "fixtures" / "optimum"
VOCAB = 64


def _load(name: str) -> ir.Model:
    import onnx.parser

    return ir.from_proto(onnx.parser.parse_model((FIXTURES / f"{name}.onnx.txt").read_text()))


def _feeds(model: ir.Model, *, batch: int, seq: int, past: int) -> dict[str, np.ndarray]:
    """Inputs at the given sizes; row 0 left-padded by up to two positions, never all its keys
    (a row that sees no key is the mean of V in the exporter's chain, zeros in ORT's Attention)."""
    sizes = {"batch_size": batch, "sequence_length": seq, "past_sequence_length": past,
             "past_sequence_length + sequence_length": past + seq}
    rng = np.random.default_rng(0)
    feeds = {}
    for v in model.graph.inputs:
        dims = [d if isinstance(d, int) else sizes[d.value] for d in v.shape]
        if v.name == "attention_mask":
            feeds[v.name] = np.ones(dims, np.int64)
            feeds[v.name][0, :min(2, dims[1] - 1)] = 0
        elif v.name == "position_ids":
            feeds[v.name] = np.tile(np.arange(past, past + seq), (batch, 1)).astype(np.int64)
        elif v.name == "token_type_ids":
            feeds[v.name] = np.zeros(dims, np.int64)
        elif v.dtype == ir.DataType.INT64:
            feeds[v.name] = rng.integers(0, VOCAB, dims).astype(np.int64)
        else:
            feeds[v.name] = rng.standard_normal(dims).astype(np.float32)
    return feeds


def _run(model: ir.Model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(ir.to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


@pytest.mark.parametrize("name", ["llama", "gpt2", "bert"])
def test_optimum_attention_is_recognised_and_exact(name):
    source, model = _load(name), _load(name)
    result = CanonicalizeAttentionPass().run(model, None)
    assert result.modified
    assert (result.stats["self"], result.stats["cross"], result.stats["from_decomposed"]) == (2, 0, 2)
    assert len(af.attention_sites(model)) == 2
    assert not [n for n in model.graph if n.op_type == "Softmax"]
    # The graph inputs keep their symbolic axes: one graph for prefill, decode and any batch.
    assert [str(v.shape) for v in model.graph.inputs] == [str(v.shape) for v in source.graph.inputs]
    for batch, seq, past in [(2, 5, 3), (1, 7, 0), (3, 1, 6)]:
        feeds = _feeds(source, batch=batch, seq=seq, past=past)
        for after, before in zip(_run(model, feeds), _run(source, feeds)):
            np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-5)


def test_expression_dims_are_computed_for_synthesized_inputs():
    """Optimum names the mask axis ``past_sequence_length + sequence_length``: the made-up
    inputs must agree with the past and current lengths, or ORT rejects them (it did)."""
    model = _load("gpt2")
    feeds, dims = synthesize_inputs(model.graph, seed=0, batch=None)
    assert dims["past_sequence_length + sequence_length"] == dims["past_sequence_length"] + dims["sequence_length"]
    assert feeds["attention_mask"].shape[1] == feeds["past_key_values.0.key"].shape[2] + feeds["input_ids"].shape[1]
    _run(model, feeds)  # ORT accepts them


def test_compile_cli_on_an_optimum_export(tmp_path, capsys):
    """The file as a user passes it: synthesized inputs, the attention canonical, fidelity exact."""
    out, path = tmp_path / "art", tmp_path / "gpt2.onnx"
    ir.save(_load("gpt2"), path)
    rc = compile_cli.main([str(path), "--passes", "canonicalize-attn", "--out", str(out), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    manifest = json.loads((out / "genzip.json").read_text())
    assert manifest["fidelity"]["cosine"] > 0.99999
