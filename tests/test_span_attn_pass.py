"""span-attn on small canonical-form causal models, plus the FLOP counting it reports."""

from __future__ import annotations

import itertools
import json

import numpy as np
import onnx_ir as ir
import pytest
from helpers_onnx import ort_session

from genzip.errors import GenzipError
from genzip.passes import build_pipeline, run_pipeline
from genzip.passes.attention import _flops as af
from genzip.passes.attention._canonical import canonical_attention_node
from genzip.passes.attention.span_attn import SpanAttentionPass
from genzip.passes.infra.contract import FACTS_KEY, build_options

D, N = 8, 40
SCALE = D**-0.5
HEADS = [(4, 4), (4, 2)]  # (query heads, kv heads) of the two causal layers


def tensor(name, heads, n=N):
    return ir.Value(name=name, type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([1, heads, n, D]))


def model(n=N, with_dense=True):
    """Layer 0 (MHA) and layer 1 (GQA 4/2) causal; a non-causal self-attention between them."""
    q0, q1, k1, v1 = tensor("q0", 4, n), tensor("q1", 4, n), tensor("k1", 2, n), tensor("v1", 2, n)
    a0 = canonical_attention_node(q0, q0, q0, scale=SCALE, causal=True, index=0)
    nodes = [a0]
    x = a0.outputs[0]
    if with_dense:
        nodes.append(canonical_attention_node(x, x, x, scale=SCALE, index=1))
        x = nodes[-1].outputs[0]
    add = ir.Node("", "Add", [x, q1], num_outputs=1)
    a1 = canonical_attention_node(add.outputs[0], k1, v1, scale=SCALE, causal=True, index=2)
    nodes += [add, a1]
    for i, node in enumerate(nodes):
        out = node.outputs[0]
        out.name, out.dtype, out.shape = f"h{i}", ir.DataType.FLOAT, ir.Shape([1, 4, n, D])
    graph = ir.Graph([q0, q1, k1, v1], [a1.outputs[0]], nodes=nodes, opset_imports={"": 23}, name="g")
    m = ir.Model(graph, ir_version=10)
    m.metadata_props[FACTS_KEY] = "attention-canonical"
    return m


def attend(q, k, v, masks):
    group = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    s = np.einsum("bhid,bhjd->bhij", q.astype(np.float64), k) * SCALE
    s = np.where(masks, s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ v


def span_masks(spans, sinks, n=N):
    i, j = np.arange(n)[:, None], np.arange(n)[None]
    return np.stack([(j <= i) & ((j < sinks) | (i - j < s)) for s in spans])[None]


def apply(m, spec):
    (record,) = run_pipeline(m, build_pipeline(spec, initial_facts=frozenset({"attention-canonical"})))
    return record


def spans_of(m):
    return [list(n.attributes["spans"].as_ints()) for n in m.graph if n.op_type == "SpanAttention"]


def run_model(m, seed=0):
    rng = np.random.default_rng(seed)
    feeds = {v.name: rng.standard_normal(v.shape.numpy(), dtype=np.float32) for v in m.graph.inputs}
    return feeds, ort_session(m, threads=1).run(None, feeds)[0]


def test_uniform_rule_matches_reference():
    m = model()
    record = apply(m, "span-attn{alpha=3 beta=0.25 sinks=2}")  # span = 3 + 10 = 13
    assert sorted(n.op_type for n in m.graph) == ["Add", "Attention", "SpanAttention", "SpanAttention"]
    assert spans_of(m) == [[13] * 4, [13] * 4]
    assert record.modified and record.stats["nodes_replaced"] == 2
    dense, causal = af.attention_flops(1, 4, N * N, D), af.attention_flops(1, 4, N * (N + 1) // 2, D)
    span = af.attention_flops(1, 4, af.span_pairs(N, 13, 2), D)
    assert record.stats["attn_flops_before"] == dense + 2 * causal
    assert record.stats["attn_flops_after"] == dense + 2 * span
    feeds, y = run_model(m)
    h0 = attend(feeds["q0"], feeds["q0"], feeds["q0"], span_masks([13] * 4, 2))
    h1 = attend(h0, h0, h0, True)
    expected = attend(h1 + feeds["q1"], feeds["k1"], feeds["v1"], span_masks([13] * 4, 2))
    np.testing.assert_allclose(y, expected, atol=1e-5)


def test_plan_file_per_head_spans(tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"alphas": [[1, 2, 50, 4], [0, 8, 8, 0]],
                                "betas": [[0, 0, 0, 0.1], [0.5, 0, 0, 0]], "sinks": 3}))
    m = model(with_dense=False)
    apply(m, f"span-attn{{plan={plan}}}")
    # Clamped to [sinks, N]: 1 -> 3, 50 -> 40; 4 + 0.1 * 40 = 8; 0.5 * 40 = 20.
    assert spans_of(m) == [[3, 3, 40, 8], [20, 8, 8, 3]]
    feeds, y = run_model(m, seed=1)
    h0 = attend(feeds["q0"], feeds["q0"], feeds["q0"], span_masks([3, 3, 40, 8], 3))
    expected = attend(h0 + feeds["q1"], feeds["k1"], feeds["v1"], span_masks([20, 8, 8, 3], 3))
    np.testing.assert_allclose(y, expected, atol=1e-5)


@pytest.mark.parametrize("content,message", [
    ("{not json", "not valid JSON"),
    ('{"alphas": [[1, 2, 3, 4]], "betas": [[0, 0, 0, 0]], "sinks": 0}', "1 layers but the model has 2"),
    ('{"alphas": [[1, 2, 3, 4], [1, 2]], "betas": [[0, 0, 0, 0], [0, 0]], "sinks": 0}', "layer 1 has 2 heads"),
    ('{"alphas": [[1]], "betas": [[0, 0]], "sinks": 0}', "different layer/head counts"),
    ('{"alphas": [["a"]], "betas": [[0]], "sinks": 0}', "lists \\(heads\\) of numbers"),
    ('{"alphas": [], "betas": [], "sinks": -1}', "sinks must be"),
    ('[1, 2]', "must be an object"),
])
def test_bad_plans(tmp_path, content, message):
    plan = tmp_path / "plan.json"
    plan.write_text(content)
    with pytest.raises(GenzipError, match=message) as err:
        apply(model(with_dense=False), f"span-attn{{plan={plan}}}")
    assert "\n" not in str(err.value)
    with pytest.raises(GenzipError, match="span-attn plan .* does not exist"):
        apply(model(), f"span-attn{{plan={tmp_path / 'missing.json'}}}")


def test_not_modified_when_nothing_matches():
    m = model()
    with pytest.raises(GenzipError, match="span-attn' was asked for but changed nothing: .*span-covers-sequence"):
        apply(m, "span-attn{alpha=100}")
    record = apply(m, "span-attn{alpha=100 allow-noop=true}")  # every span covers N
    assert not record.modified and record.stats["skipped_span_covers_sequence"] == 2
    assert not m.functions


def test_symbolic_length_needs_seq():
    with pytest.raises(GenzipError, match="seq=N"):
        apply(model(n="S"), "span-attn{alpha=4 beta=0.1}")
    m = model(n="S")
    record = apply(m, "span-attn{alpha=4 beta=0.1 seq=60}")
    assert spans_of(m) == [[10] * 4, [10] * 4] and record.stats["flops_unknown_nodes"] == 3


def test_options_validation():
    for raw in ({}, {"plan": "p.json", "alpha": "1"}, {"plan": "p.json", "sinks": "2"}, {"alpha": "nan"},
                {"alpha": "1", "sinks": "-1"}, {"beta": "0.1", "seq": "0"}):
        with pytest.raises(GenzipError):
            build_options(SpanAttentionPass, raw)
    with pytest.raises(GenzipError, match="attention-canonical"):
        build_pipeline("span-attn{alpha=4}")


def test_pair_counts_match_brute_force():
    for sq, skv, left, right in itertools.product([1, 3, 8], [1, 5, 8], [0, 2, 20], [0, 3, 20]):
        i, j = np.arange(sq)[:, None], np.arange(skv)[None]
        assert af.band_pairs(sq, skv, left, right) == int(((j - i >= -left) & (j - i <= right)).sum())
    for n, span, sinks in itertools.product([1, 5, 17], [1, 3, 30], [0, 2, 40]):
        assert af.span_pairs(n, span, sinks) == int(span_masks([span], sinks, n).sum())
    assert af.window_pairs(4096, 512) == 4096 * 1025 - 512 * 513
    assert af.dense_pairs(5, 7, causal=True) == 15


def test_polygraphy_runs_the_result(tmp_path):
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    venv_tool = Path(sys.executable).parent / "polygraphy"
    polygraphy = str(venv_tool) if venv_tool.exists() else shutil.which("polygraphy")
    if polygraphy is None:
        pytest.skip("polygraphy is not installed")
    m = model()
    apply(m, "span-attn{alpha=3 beta=0.25 sinks=2}")
    path = tmp_path / "model.onnx"
    ir.save(m, path)
    result = subprocess.run([polygraphy, "run", str(path), "--onnxrt"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "PASSED" in result.stdout + result.stderr
