"""window-attn on small canonical-form models (built here, without canonicalize-attn)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
from helpers_onnx import ort_session

from genzip.errors import GenzipError
from genzip.passes import build_pipeline, run_pipeline
from genzip.passes.attention import _flops as af
from genzip.passes.attention._canonical import canonical_attention_node
from genzip.passes.attention.window_attn import WindowAttentionPass
from genzip.passes.infra.contract import FACTS_KEY, build_options

H, D, M = 2, 8, 12
SCALE = D**-0.5


def tensor(name, seq, heads=H):
    return ir.Value(name=name, type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([1, heads, seq, D]))


def model(n=64, causal_last=False):
    """x -> self(0) -> cross(1, context c) -> self(2, causal if asked) -> y."""
    x, c = tensor("x", n), tensor("c", M)
    a0 = canonical_attention_node(x, x, x, scale=SCALE, index=0)
    a1 = canonical_attention_node(a0.outputs[0], c, c, scale=SCALE, kind="cross", index=1)
    a2 = canonical_attention_node(a1.outputs[0], a1.outputs[0], a1.outputs[0], scale=SCALE,
                                     causal=causal_last, index=2)
    for i, node in enumerate((a0, a1, a2)):
        out = node.outputs[0]
        out.name, out.dtype, out.shape = f"h{i}", ir.DataType.FLOAT, ir.Shape([1, H, n, D])
    graph = ir.Graph([x, c], [a2.outputs[0]], nodes=[a0, a1, a2], opset_imports={"": 23}, name="g")
    m = ir.Model(graph, ir_version=10)
    m.metadata_props[FACTS_KEY] = "attention-canonical"
    return m


def reference(x, c, masks):
    def attn(q, k, v, mask):
        s = np.einsum("bhid,bhjd->bhij", q.astype(np.float64), k) * SCALE
        s = np.where(mask, s, -np.inf)
        p = np.exp(s - s.max(-1, keepdims=True))
        return (p / p.sum(-1, keepdims=True)) @ v

    h0 = attn(x, x, x, masks[0])
    h1 = attn(h0, c, c, True)
    return attn(h1, h1, h1, masks[2])


def apply(m, spec):
    (record,) = run_pipeline(m, build_pipeline(spec, initial_facts=frozenset({"attention-canonical"})))
    return record


def ops(m):
    return sorted(f"{n.domain or 'ai.onnx'}.{n.op_type}" for n in m.graph)


def band(n, w):
    i, j = np.arange(n)[:, None], np.arange(n)[None]
    return np.abs(i - j) <= w


def test_replaces_self_attention_only_and_matches_reference():
    m = model()
    record = apply(m, "window-attn{tokens=5}")
    assert ops(m) == ["ai.onnx.Attention", "genzip.WindowAttention", "genzip.WindowAttention"]
    assert [n.metadata_props[af.KIND_KEY] for n in m.graph if n.op_type == "Attention"] == ["cross"]
    assert list(m.functions) == [("genzip", "WindowAttention", "w5_c32")]
    dense = af.attention_flops(1, H, 64 * 64, D)
    window = af.attention_flops(1, H, 64 * 11 - 5 * 6, D)
    cross = af.attention_flops(1, H, 64 * M, D)
    assert record.modified and record.stats["nodes_replaced"] == 2
    assert record.stats["attn_flops_before"] == 2 * dense + cross
    assert record.stats["attn_flops_after"] == 2 * window + cross
    rng = np.random.default_rng(0)
    x, c = rng.standard_normal((1, H, 64, D), dtype=np.float32), rng.standard_normal((1, H, M, D), dtype=np.float32)
    (y,) = ort_session(m, threads=1).run(None, {"x": x, "c": c})
    np.testing.assert_allclose(y, reference(x, c, [band(64, 5), None, band(64, 5)]), atol=1e-5)


def test_fraction_layers_and_residual_outputs():
    m = model(n=64)
    record = apply(m, "window-attn{window=0.125 layers=2 residual=true}")
    assert record.stats["nodes_replaced"] == 1 and record.stats["windows"] == [8]
    assert [v.name for v in m.graph.outputs] == ["h2", "attn_residual.2"]
    rng = np.random.default_rng(1)
    x, c = rng.standard_normal((1, H, 64, D), dtype=np.float32), rng.standard_normal((1, H, M, D), dtype=np.float32)
    y, residual = ort_session(m, threads=1).run(None, {"x": x, "c": c})
    np.testing.assert_allclose(y, reference(x, c, [True, None, band(64, 8)]), atol=1e-5)
    np.testing.assert_allclose(y + residual, reference(x, c, [True, None, True]), atol=1e-5)


def test_nothing_to_do_is_not_modified():
    m = model(causal_last=True)
    # Asked for and changing nothing is an error that says why, unless allow-noop=true.
    with pytest.raises(GenzipError, match="window-attn' was asked for but changed nothing: .*window-covers-sequence"):
        apply(m, "window-attn{tokens=100}")
    assert not apply(m, "window-attn{tokens=100 allow-noop=true}").modified  # window covers N=64
    record = apply(m, "window-attn{tokens=4 layers=2 allow-noop=true}")  # the only selected node is causal
    assert not record.modified and record.stats["skipped_causal"] == 1
    assert ops(m).count("ai.onnx.Attention") == 3 and not m.functions


def test_bad_layers_and_symbolic_length():
    with pytest.raises(GenzipError, match="self-attention indices in this model: 0,2"):
        apply(model(), "window-attn{tokens=4 layers=1}")
    m = model(n="N")
    with pytest.raises(GenzipError, match="tokens="):
        apply(m, "window-attn{window=0.25}")
    record = apply(m, "window-attn{tokens=4}")
    assert record.stats["nodes_replaced"] == 2 and record.stats["flops_unknown_nodes"] == 3


def test_options_and_preconditions():
    for raw in ({"window": "0.1", "tokens": "3"}, {"window": "2"}, {"tokens": "-1"}, {"chunk": "0"},
                {"layers": "1,1"}):
        with pytest.raises(GenzipError):
            build_options(WindowAttentionPass, raw)
    assert WindowAttentionPass().options.window == 0.125
    with pytest.raises(GenzipError, match="attention-canonical"):
        build_pipeline("window-attn")
    with pytest.raises(GenzipError, match="attention-canonical"):
        build_pipeline("window-attn{window=0.125}")


def test_pipeline_with_canonicalize():
    pytest.importorskip("genzip.passes.attention.canonicalize_attn")
    pipeline = build_pipeline("canonicalize-attn,window-attn{window=0.125}")
    assert [p.name for p in pipeline.passes] == ["canonicalize-attn", "window-attn"]


def test_polygraphy_runs_the_result(tmp_path):
    venv_tool = Path(sys.executable).parent / "polygraphy"
    polygraphy = str(venv_tool) if venv_tool.exists() else shutil.which("polygraphy")
    if polygraphy is None:
        pytest.skip("polygraphy is not installed")
    m = model(n="N")
    apply(m, "window-attn{tokens=6 residual=true}")
    path = tmp_path / "model.onnx"
    ir.save(m, path)
    result = subprocess.run(
        [polygraphy, "run", str(path), "--onnxrt", "--input-shapes", f"x:[1,{H},40,{D}]", f"c:[1,{H},{M},{D}]"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "PASSED" in result.stdout + result.stderr
