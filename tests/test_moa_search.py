"""moa-search: the plan MILP (vs brute force), the profile maths, causal-mask proofs, and the CLI."""

from __future__ import annotations

import itertools
import json

import numpy as np
import onnx_ir as ir
import pytest

from genzip.errors import GenzipError
from genzip.passes.attention import _causal_mask as moa_mask
from genzip.passes.attention import _flops as af
from genzip.passes.attention.span_attn import resolve_span
from genzip.searches import moa_milp, moa_profile


def instance(seed, layers=2, heads=2, n_cfg=3, n_len=2):
    rng = np.random.default_rng(seed)
    loss = rng.random((n_len, layers, heads, n_cfg))
    density = rng.uniform(0.1, 1.0, (n_len, n_cfg))
    return loss, density


def assignments(loss, k):
    _, layers, heads, n_cfg = loss.shape
    for flat in itertools.product(range(n_cfg), repeat=layers * heads):
        choice = np.array(flat).reshape(layers, heads)
        if all(len(set(row)) <= k for row in choice.tolist()):
            yield choice


def brute_force(loss, density, budget, k):
    best = None
    for choice in assignments(loss, k):
        objective, dens = moa_milp.evaluate(choice, loss, density)
        if max(dens) <= budget + 1e-9 and (best is None or objective < best):
            best = objective
    return best


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("k", [1, 2])
def test_milp_matches_brute_force(seed, k):
    loss, density = instance(seed)
    floor = moa_milp.min_density(density, 2, 2, k)
    assert floor == pytest.approx(min(max(moa_milp.evaluate(c, loss, density)[1]) for c in assignments(loss, k)))
    budget = floor + (1 - floor) * np.random.default_rng(seed + 100).random() * 0.6
    expected = brute_force(loss, density, budget, k)
    sel = moa_milp.select_rules(loss, density, budget=budget, max_distinct=k)
    assert sel.objective == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_k_distinct_and_budget_hold(k):
    loss, density = instance(7, layers=3, heads=4, n_cfg=6, n_len=3)
    budget = moa_milp.min_density(density, 3, 4, k) + 0.1
    sel = moa_milp.select_rules(loss, density, budget=budget, max_distinct=k)
    assert all(len(set(row)) <= k for row in sel.choice.tolist())
    assert max(sel.density) <= budget + 1e-9
    assert sel.density == pytest.approx(moa_milp.evaluate(sel.choice, loss, density)[1])


def test_budget_at_floor_is_feasible_and_below_is_not():
    loss, density = instance(3)
    floor = moa_milp.min_density(density, 2, 2, 1)
    sel = moa_milp.select_rules(loss, density, budget=floor, max_distinct=1)
    assert max(sel.density) == pytest.approx(floor)
    with pytest.raises(GenzipError, match=f"minimum achievable density with these rules is {floor:.4f}"):
        moa_milp.select_rules(loss, density, budget=floor - 0.01, max_distinct=1)


def test_density_and_keep_mask_agree_with_pair_counts():
    for n, span, sinks in [(32, 5, 0), (32, 5, 3), (17, 16, 2), (9, 9, 4), (40, 1, 1)]:
        keep = moa_profile.keep_mask(n, span, sinks)
        assert keep.sum() == af.span_pairs(n, span, sinks)
        assert moa_profile.span_density(n, span, sinks) == pytest.approx(keep.sum() / (n * (n + 1) / 2))
    table = moa_profile.density_table([16, 32], [(0, 0.5), (32, 0)], sinks=2)
    assert table[:, 1].tolist() == [1.0, 1.0]
    assert table[1, 0] == moa_profile.span_density(32, resolve_span(0, 0.5, 32, 2), 2)


def test_costs_vanish_for_covering_spans_and_are_nonnegative():
    rng = np.random.default_rng(0)
    n = 12
    logits = rng.standard_normal((1, 3, n, n))
    logits = np.where(np.tril(np.ones((n, n), bool)), logits, -np.inf)
    attn = np.exp(logits - logits.max(-1, keepdims=True))
    attn /= attn.sum(-1, keepdims=True)
    grad = rng.standard_normal(attn.shape)
    full = moa_profile.keep_mask(n, n, 0)
    for metric in moa_profile.METRICS:
        assert np.allclose(moa_profile.head_cost(metric, attn, grad, full), 0)
        assert (moa_profile.head_cost(metric, attn, grad, moa_profile.keep_mask(n, 3, 1)) >= 0).all()
    # Row-blocked (what profile_module runs, so long lengths fit in memory) equals whole.
    masks = {s: moa_profile.keep_mask(n, s, 1) for s in (2, 5, n)}
    for metric in moa_profile.METRICS:
        blocked = moa_profile.head_costs(metric, attn.astype(np.float32), grad.astype(np.float32), masks, rows=5)
        for s, mask in masks.items():
            np.testing.assert_allclose(blocked[s], moa_profile.head_cost(
                metric, attn.astype(np.float32).astype(np.float64), grad.astype(np.float32).astype(np.float64),
                mask), rtol=1e-9, atol=1e-12)
    # First order is linear in the attention change: check it against a direct sum.
    keep = moa_profile.keep_mask(n, 4, 0)
    renorm = attn * keep / (attn * keep).sum(-1, keepdims=True)
    assert np.allclose(moa_profile.influence(attn, grad, keep), ((renorm - attn) * grad).sum(axis=(0, 2, 3)))


def _mask_model(kind: str, n: int = 6):
    """q [B, 2, n, 4] -> a mask value built as ``kind`` says; returns (model, mask value)."""
    q = ir.Value(name="q", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape(["batch", 2, n, 4]))
    nodes, inputs = [], [q]

    def op(op_type, *ins, **attrs):
        node = ir.Node("", op_type, list(ins), ir.convenience.convert_attributes(attrs), num_outputs=1)
        node.outputs[0].name = f"v{len(nodes)}"
        nodes.append(node)
        return node.outputs[0]

    def const(x):
        return op("Constant", value=ir.tensor(np.asarray(x, dtype=np.int64)))

    if kind == "input":
        mask = ir.Value(name="m", type=ir.TensorType(ir.DataType.BOOL), shape=ir.Shape([n, n]))
        inputs.append(mask)
    else:
        length = op("Squeeze", op("Shape", q, start=2, end=3), const([0]))
        r = op("Range", const(0), length, const(1))
        rows, cols = op("Unsqueeze", r, const([1])), op("Unsqueeze", r, const([0]))
        mask = op("LessOrEqual", cols, rows) if kind == "causal" else op("GreaterOrEqual", cols, rows)
    out = op("Identity", mask)
    graph = ir.Graph(inputs, [out], nodes=nodes, opset_imports={"": 23}, name="g")
    return ir.Model(graph, ir_version=10), mask


@pytest.mark.parametrize("kind, expected", [("causal", True), ("anticausal", False), ("input", False)])
def test_causal_mask_proof(kind, expected):
    model, mask = _mask_model(kind)
    assert moa_mask.is_static_causal(model, mask, 6) is expected
    if kind == "causal":
        assert not moa_mask.is_static_causal(model, mask, 5)  # wrong length never passes


def test_constant_causal_mask():
    n = 5
    init = ir.Value(name="m", const_value=ir.tensor(np.tril(np.ones((n, n), bool))))
    graph = ir.Graph([], [], nodes=[], initializers=[init], opset_imports={"": 23})
    assert moa_mask.is_static_causal(ir.Model(graph, ir_version=10), init, n)


def _cli(*argv):
    from genzip.tools import genzip_cli

    return genzip_cli.main(list(argv))


def test_cli_infeasible_budget_says_minimum(tmp_path, capsys):
    rc = _cli("moa-search", "tiny-llama", "--out", str(tmp_path / "p.json"), "--budget", "0.01",
              "--lengths", "16,32", "--quiet")
    err = capsys.readouterr().err
    rules = [(a, b) for a in (0, 4, 8) for b in (0, 0.125, 0.25, 0.5, 1)]
    floor = moa_milp.min_density(moa_profile.density_table([16, 32], rules, 2), 2, 4, 2)
    assert rc == 2 and f"minimum achievable density with these rules is {floor:.4f}" in err
    assert not (tmp_path / "p.json").exists()


@pytest.mark.parametrize("argv", [["--budget", "0"], ["--budget", "1.5"], ["--max-distinct", "0"],
                                  ["--alphas", "a,b"], ["--lengths", "0"], ["--sinks", "-1"]])
def test_cli_bad_arguments(tmp_path, capsys, argv):
    try:
        rc = _cli("moa-search", "tiny-llama", "--out", str(tmp_path / "p.json"), "--lengths", "16", *argv)
    except SystemExit as e:  # argparse type errors
        rc = e.code
    assert rc == 2
    assert capsys.readouterr().err.strip()


def test_cli_plan_compiles_tiny_llama_and_runs_in_ort(tmp_path, capsys):
    import onnxruntime as ort

    from genzip.tools import compile_cli

    plan_path = tmp_path / "plan.json"
    assert _cli("moa-search", "tiny-llama", "--out", str(plan_path), "--budget", "0.9", "--max-distinct", "2",
                "--json", "--quiet") == 0
    summary = json.loads(capsys.readouterr().out)
    plan = json.loads(plan_path.read_text())
    assert len(plan["alphas"]) == 2 and all(len(row) == 4 for row in plan["alphas"])
    assert all(len(set(zip(a, b))) <= 2 for a, b in zip(plan["alphas"], plan["betas"]))
    assert max(summary["density"]) <= 0.9 + 1e-9 and summary["lengths"] == [16, 32]
    spans = [[resolve_span(a, b, 32, plan["sinks"]) for a, b in zip(*rows)]
             for rows in zip(plan["alphas"], plan["betas"])]
    assert min(min(row) for row in spans) < 32  # the plan actually restricts something

    out = tmp_path / "art"
    assert compile_cli.main(["tiny-llama", "--target", "ort", "--out", str(out), "--quiet", "--passes",
                             f"canonicalize-attn,span-attn{{plan={plan_path}}},dce"]) == 0
    model = ir.load(str(out / "model.onnx"))
    nodes = [n for n in model.graph if n.op_type == "SpanAttention"]
    restricted = [row for row in spans if min(row) < 32]  # layers whose spans all cover N stay dense
    assert [list(n.attributes["spans"].as_ints()) for n in nodes] == restricted
    assert len([n for n in model.graph if n.op_type == "Attention"]) == len(spans) - len(restricted)
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = dict(np.load(out / "inputs.npz"))
    (logits, *_) = sess.run(None, feeds)
    assert logits.shape[:2] == (1, 32) and np.isfinite(logits).all()


def _masked_attention_model(kind: str, n: int = 12):
    """Self-attention q=k=v [1, 2, n, 4] with an explicit mask (``kind`` as in ``_mask_model``)."""
    from genzip.passes.attention._canonical import canonical_attention_node
    from genzip.passes.infra.contract import FACTS_KEY

    model, mask = _mask_model(kind, n)
    graph = model.graph
    q = graph.inputs[0]
    q.shape = ir.Shape([1, 2, n, 4])
    base = canonical_attention_node(q, q, q, scale=0.5, index=0)
    node = ir.Node("", "Attention", [q, q, q, mask], base.attributes.values(), num_outputs=1,
                   name="attn", metadata_props=dict(base.metadata_props))
    graph.append(node)
    out = node.outputs[0]
    out.name, out.dtype, out.shape = "y", ir.DataType.FLOAT, ir.Shape([1, 2, n, 4])
    graph.outputs.clear()
    graph.outputs.append(out)
    model.metadata_props[FACTS_KEY] = "attention-canonical"
    return model


@pytest.mark.parametrize("kind", ["causal", "anticausal", "input"])
def test_span_attn_on_explicit_masks(kind):
    from helpers_onnx import ort_session

    from genzip.passes import build_pipeline, run_pipeline

    n, span, sinks = 12, 4, 1
    model = _masked_attention_model(kind, n)
    noop = "" if kind == "causal" else " allow-noop=true"  # asked to transform, it finds nothing
    (record,) = run_pipeline(model, build_pipeline(f"span-attn{{alpha={span} sinks={sinks}{noop}}}",
                                                   initial_facts=frozenset({"attention-canonical"})))
    if kind != "causal":  # not provably causal: never rewritten
        assert not record.modified and record.stats.get("skipped_has_mask", 0) == 0
        assert [n.op_type for n in model.graph if n.op_type.endswith("Attention")] == ["Attention"]
        return
    assert record.modified and record.stats["causal_masks_recognized"] == 1
    x = np.random.default_rng(0).standard_normal((1, 2, n, 4), dtype=np.float32)
    y = ort_session(model, threads=1).run(None, {"q": x})[0]
    s = np.einsum("bhid,bhjd->bhij", x.astype(np.float64), x) * 0.5
    s = np.where(moa_profile.keep_mask(n, span, sinks), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    np.testing.assert_allclose(y, (p / p.sum(-1, keepdims=True)) @ x, atol=1e-5)


def test_moa_influence_is_the_sum_of_each_dropped_entrys_absolute_effect():
    """Each entry's effect is the first-order loss change of dropping it alone and
    renormalizing its row (computed directly here); the cost sums their magnitudes."""
    rng = np.random.default_rng(3)
    n = 6
    logits = np.where(np.tril(np.ones((n, n), bool)), rng.standard_normal((1, 2, n, n)), -np.inf)
    attn = np.exp(logits - logits.max(-1, keepdims=True))
    attn /= attn.sum(-1, keepdims=True)
    grad = rng.standard_normal(attn.shape)
    keep = moa_profile.keep_mask(n, 2, 1)
    want = np.zeros(2)
    for h in range(2):
        for i in range(n):
            for j in range(i + 1):
                if keep[i, j]:
                    continue
                row = attn[0, h, i].copy()
                dropped = row.copy()
                dropped[j] = 0
                dropped /= dropped.sum()
                want[h] += abs(((dropped - row) * grad[0, h, i]).sum())
    # Dropping one entry: exact change of the renormalized row == the closed form.
    np.testing.assert_allclose(moa_profile.moa_influence(attn, grad, keep), want, rtol=1e-9)
    np.testing.assert_allclose(moa_profile.head_cost("gradient", attn, grad, keep), want, rtol=1e-9)
    # Not the magnitude of the summed change (what the profile took before).
    assert not np.allclose(want, np.abs(moa_profile.influence(attn, grad, keep)))


def test_calibration_text_uses_the_models_tokenizer():
    from genzip.runtime import _eval_data
    from genzip.tools import cmd_moa_search

    folder = _eval_data.weights_folder("trained-llama")

    class Source:
        info = {"path": str(folder)}

    tok, trained = cmd_moa_search._tokenizer(Source())
    assert tok is not None and not trained
    text = "In the beginning God created the heaven and the earth. " * 4
    windows = moa_profile.token_windows(text, 8, 1024, 2, tok)
    np.testing.assert_array_equal(windows.ravel(), tok(text, add_special_tokens=False)["input_ids"][:16])
    assert moa_profile.token_windows(text, 8, 1024, 2).ravel()[0] == ord("I")  # no tokenizer: UTF-8 bytes
    with pytest.raises(GenzipError, match="outside the model's 16-token"):
        moa_profile.token_windows(text, 8, 16, 2, tok)
    Source.info = {"path": "/nonexistent"}
    assert cmd_moa_search._tokenizer(Source()) == (None, False)
