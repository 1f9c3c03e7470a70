"""``kv-quant`` on a small hand-built cache graph: the rewrite, its numerics in ORT, the
``kv-int8`` fact, the feed quantizer and the refusals."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from genzip.errors import GenzipError
from genzip.ort_session import make_session
from genzip.passes import build_pipeline, run_pipeline
from genzip.passes.infra.context import PassContext
from genzip.passes.infra.facts import problem
from genzip.passes.quant._kv_layout import layout, quantize_feeds, quantize_rows


def _cache_graph(layers: int = 2) -> ir.Model:
    """logits = ReduceSum(K_total); present.i.key = Concat(past.i.key, 3 * x) per layer."""
    nodes, inputs, outputs = [], [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 2, "s", 4])], []
    sums = []
    for i in range(layers):
        past, present = f"past_key_values.{i}.key", f"present.{i}.key"
        inputs.append(helper.make_tensor_value_info(past, TensorProto.FLOAT, ["b", 2, "p", 4]))
        nodes += [helper.make_node("Mul", ["x", "three"], [f"new{i}"]),
                  helper.make_node("Concat", [past, f"new{i}"], [present], axis=2),
                  helper.make_node("ReduceSum", [present], [f"sum{i}"], keepdims=0)]
        outputs.append(helper.make_tensor_value_info(present, TensorProto.FLOAT, ["b", 2, "t", 4]))
        sums.append(f"sum{i}")
    nodes.append(helper.make_node("Sum", sums, ["logits"]))
    graph = helper.make_graph(nodes, "cache", inputs,
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [])] + outputs,
                              [helper.make_tensor("three", TensorProto.FLOAT, [], [3.0])])
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)]))


def _run(model: ir.Model, feeds):
    session = make_session(ir.to_proto(model).SerializeToString())
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def _feeds(rng, layers=2, past=3, seq=2):
    feeds = {"x": rng.standard_normal((1, 2, seq, 4)).astype(np.float32)}
    feeds.update({f"past_key_values.{i}.key": rng.standard_normal((1, 2, past, 4)).astype(np.float32) * (i + 1)
                  for i in range(layers)})
    return feeds


def test_rewrite_makes_the_cache_int8_and_matches_numpy():
    model = _cache_graph()
    feeds = _feeds(np.random.default_rng(0))
    ref = _run(model, feeds)
    records = run_pipeline(model, build_pipeline("kv-quant"), context=PassContext())
    assert records[0].modified and records[0].stats["quantized"] == 2
    assert problem("kv-int8", model) is None
    g = model.graph
    assert [v.name for v in g.inputs] == ["x", "past_key_values.0.key", "past_key_values.0.key_scale",
                                          "past_key_values.1.key", "past_key_values.1.key_scale"]
    assert g.inputs[1].dtype == ir.DataType.INT8 and g.outputs[1].dtype == ir.DataType.INT8
    assert layout(model)["scales"] == {"past_key_values.0.key": "past_key_values.0.key_scale",
                                       "past_key_values.1.key": "past_key_values.1.key_scale"}
    qfeeds = quantize_feeds(model, feeds)
    got = _run(model, qfeeds)
    for i in range(2):
        total = np.concatenate([feeds[f"past_key_values.{i}.key"], 3 * feeds["x"]], axis=2)
        q, s = quantize_rows(total)
        np.testing.assert_array_equal(got[f"present.{i}.key"], q)  # the graph's rounding is NumPy's
        np.testing.assert_allclose(got[f"present.{i}.key_scale"], s, rtol=1e-6)
    # Attention-side readers see the dequantized cache: close to, not equal to, float.
    deq = sum(float((quantize_rows(np.concatenate([feeds[f"past_key_values.{i}.key"], 3 * feeds["x"]], 2))[0]
                     * quantize_rows(np.concatenate([feeds[f"past_key_values.{i}.key"], 3 * feeds["x"]], 2))[1]
                     ).sum()) for i in range(2))
    np.testing.assert_allclose(got["logits"], deq, rtol=1e-4)
    assert got["logits"] != ref["logits"] and abs(got["logits"] - ref["logits"]) < 0.05 * np.abs(ref["logits"]) + 0.1


def test_requantizing_is_idempotent_and_zero_rows_are_finite():
    x = np.random.default_rng(1).standard_normal((2, 3, 5, 8)).astype(np.float32)
    x[0, 0, 0] = 0
    q, s = quantize_rows(x)
    q2, s2 = quantize_rows(q * s)
    np.testing.assert_array_equal(q, q2)
    assert np.isfinite(s).all() and not q[0, 0, 0].any() and np.abs(q).max() == 127
    assert np.abs(q * s - x).max() <= s.max() / 2 + 1e-6


def test_layers_option_selects_and_unselected_stay_float():
    model = _cache_graph()
    run_pipeline(model, build_pipeline("kv-quant{layers=1}"), context=PassContext())
    assert model.graph.inputs[1].dtype == ir.DataType.FLOAT and model.graph.inputs[2].dtype == ir.DataType.INT8
    assert problem("kv-int8", model) is None
    model.graph.inputs[3].dtype = ir.DataType.DOUBLE  # a broken scale fails the fact
    assert "has no float32" in problem("kv-int8", model)
    model.graph.inputs[1].dtype = ir.DataType.FLOAT16
    assert "not int8" in problem("kv-int8", model)
    assert "no past_key_values" in problem("kv-int8", _cache_graph())


def test_no_cache_is_refused_unchanged_and_twice_is_refused():
    plain = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = ir.from_proto(helper.make_model(plain, opset_imports=[helper.make_opsetid("", 23)]))
    before = ir.to_proto(model).SerializeToString()
    from genzip.passes.quant.kv_quant import KVQuantPass

    with pytest.raises(GenzipError, match="compile an LLM with --kv-cache"):
        KVQuantPass().run(model, PassContext())
    assert ir.to_proto(model).SerializeToString() == before
    model = _cache_graph(1)
    run_pipeline(model, build_pipeline("kv-quant"), context=PassContext())
    assert not any(n.op_type == "Concat" and n.outputs[0].name == "present.0.key" and
                   n.inputs[0].dtype == ir.DataType.FLOAT for n in model.graph)
    onnx.checker.check_model(ir.to_proto(model), full_check=True)


def test_bad_options():
    with pytest.raises(Exception, match="layer indices"):
        build_pipeline("kv-quant{layers=a}")
