"""sensitivity: metrics, the gated simulation vs the real quantized graph, the cache."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx.reference import ReferenceEvaluator
from quant_models import apply, feeds_for, mlp, run

from genzip.errors import GenzipError
from genzip.ort_session import session_options
from genzip.passes import build_pipeline
from genzip.passes.precision import _metrics as sm
from genzip.passes.precision import _probe as probe
from genzip.passes.precision.sensitivity import RESULT_KEY
from genzip.passes.quant._bos import range_key
from genzip.passes.quant._plan import write_plan

SENS = "annotate-precision{keep-defaults=false},sensitivity{candidates=w8a8,w4a16,w4a8,fp8,fp16 samples=2}"


def _dit_like(seed: int = 0) -> ir.Model:
    """x[2, 4, 8, 8] -> tokens -> 'blk.attn1.to_q' -> Relu -> 'blk.ff.net' -> image again.
    Node names stand in for module paths (no exporter metadata)."""
    rng = np.random.default_rng(seed)
    inits = {"w0": (rng.standard_normal((4, 32)) / 2).astype(np.float32),
             "w1": (rng.standard_normal((32, 4)) / 6).astype(np.float32),
             "shape_t": np.array([2, 4, 64], np.int64), "shape_i": np.array([2, 4, 8, 8], np.int64)}
    nodes = [
        oh.make_node("Reshape", ["x", "shape_t"], ["xr"], name="flat"),
        oh.make_node("Transpose", ["xr"], ["tok"], name="to_tokens", perm=[0, 2, 1]),
        oh.make_node("MatMul", ["tok", "w0"], ["h"], name="blk.attn1.to_q"),
        oh.make_node("Relu", ["h"], ["hr"], name="act"),
        oh.make_node("MatMul", ["hr", "w1"], ["o"], name="blk.ff.net"),
        oh.make_node("Transpose", ["o"], ["ot"], name="to_channels", perm=[0, 2, 1]),
        oh.make_node("Reshape", ["ot", "shape_i"], ["output"], name="image"),
    ]
    F = onnx.TensorProto.FLOAT
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", F, [2, 4, 8, 8])],
                          [oh.make_tensor_value_info("output", F, [2, 4, 8, 8])],
                          [onh.from_array(a, n) for n, a in inits.items()])
    return ir.from_proto(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 23)], ir_version=10))


def test_metric_definitions():
    rng = np.random.default_rng(0)
    y = rng.standard_normal((2, 4, 8, 8))
    assert sm.nsr(y, 0.9 * y) == pytest.approx(0.01)
    assert sm.sqnr_db(0.01) == pytest.approx(20.0)
    checker = np.indices((8, 8)).sum(0) % 2 * 2.0 - 1.0  # averages to 0 in every 4x4 window
    assert sm.content(y, y + 0.5 * checker) == pytest.approx(0.0, abs=1e-12)
    assert sm.content(y, y + 0.5) > 1e-3 and sm.nsr(y, y + 0.5 * checker) > 0.2
    logits = rng.standard_normal((1, 5, 16))
    assert sm.kl(logits, logits) == pytest.approx(0.0, abs=1e-12) and sm.kl(logits, logits * 2) > 0


def test_gated_simulation_matches_the_real_quantized_graph(tmp_path):
    """Setting an allocation's gates reproduces quant's arithmetic (w4a8 included)."""
    model = mlp(dims=(64, 64, 64, 64, 32), tokens=16)
    calib = feeds_for(model, 5, n=3)
    plan = {"mm0": "w4a8", "mm1": "w8a8", "mm2": "fp8", "mm3": "w4a16"}
    write_plan(str(tmp_path / "p.json"), plan, {})
    quantized = mlp(dims=(64, 64, 64, 64, 32), tokens=16)
    apply(quantized, f"annotate-precision{{plan={tmp_path / 'p.json'}}},calibrate{{use-cache=false}},quant", calib)
    ops = [n.op_type for n in quantized.graph]
    assert ops.count("QuantizeLinear") == 3  # static activations of w4a8, w8a8, fp8
    proto = ir.to_proto(model).SerializeToString()
    layers = [i for i, n in enumerate(model.graph) if n.op_type == "MatMul"]
    amax, _ = probe.activation_amax(model, [model.graph.node(i).inputs[0].name for i in layers], calib)
    gated = ir.from_proto(onnx.ModelProto.FromString(proto))
    gates = probe.build_gated(gated, layers, ["w8a8", "w4a16", "w4a8", "fp8"], amax, 32)
    held_out = feeds_for(model, 99)[0]
    fp = run(model, held_out)
    assert np.array_equal(run(gated, {**held_out, **probe.gate_feeds(gates, {})}), fp)  # gates off: exact FP
    sim = run(gated, {**held_out, **probe.gate_feeds(gates, dict(enumerate(plan.values())))})
    # Graph optimizations off: ORT's MatMulNBits fusion of the w4a16 layer rounds differently.
    options = session_options(level="none")
    real = ort.InferenceSession(ir.to_proto(quantized).SerializeToString(), options,
                                providers=["CPUExecutionProvider"]).run(None, held_out)[0]
    assert np.abs(sim - fp).max() > 1e-2  # the allocation does change the output ...
    np.testing.assert_allclose(sim, real, atol=1e-5 * np.abs(fp).max())  # ... exactly as quant does


def test_gated_simulation_of_the_dynamic_formats_matches_quant(tmp_path):
    """Per-token formats (ViDiT-Q w8a8-dynamic / w4a8-dynamic) are mixed-precision candidates:
    their gates reproduce quant's per-token int8 GEMMs, mixed with a static layer."""
    model = mlp(dims=(64, 64, 64, 32), tokens=16)
    calib = feeds_for(model, 5, n=3)
    plan = {"mm0": "w4a8-dynamic", "mm1": "w8a8", "mm2": "w8a8-dynamic"}
    write_plan(str(tmp_path / "p.json"), plan, {})
    quantized = mlp(dims=(64, 64, 64, 32), tokens=16)
    apply(quantized, f"annotate-precision{{plan={tmp_path / 'p.json'}}},calibrate{{use-cache=false}},"
          "quant{dynamic-form=onnx}", calib)
    ops = [n.op_type for n in quantized.graph]
    assert ops.count("MatMulInteger") == 2 and ops.count("DequantizeLinear") == 2  # w8a8: activation + weight DQ
    proto = ir.to_proto(model).SerializeToString()
    layers = [i for i, n in enumerate(model.graph) if n.op_type == "MatMul"]
    amax, _ = probe.activation_amax(model, [model.graph.node(i).inputs[0].name for i in layers], calib)
    gated = ir.from_proto(onnx.ModelProto.FromString(proto))
    gates = probe.build_gated(gated, layers, ["w8a8", "w8a8-dynamic", "w4a8-dynamic"], amax, 32)
    held_out = feeds_for(model, 99)[0]
    fp = run(model, held_out)
    assert np.array_equal(run(gated, {**held_out, **probe.gate_feeds(gates, {})}), fp)
    sim = run(gated, {**held_out, **probe.gate_feeds(gates, dict(enumerate(plan.values())))})
    real = run(quantized, held_out)
    assert np.abs(sim - fp).max() > 1e-2
    np.testing.assert_allclose(sim, real, atol=1e-5 * np.abs(fp).max())


def test_gated_simulation_of_bos_layers_matches_quant(tmp_path):
    """MixDQ: a bos layer is probed as quant builds it (token 0 exact, tokens 1: quantized
    with a range that ignores token 0's outliers), at static, dynamic and weight-only formats."""
    model = mlp(dims=(64, 64, 64, 32), tokens=8)
    bos = np.random.default_rng(3).standard_normal(64).astype(np.float32) * 30.0

    def with_bos(feeds):
        for f in feeds:
            f["x"][:, 0, :] = bos
        return feeds

    calib = with_bos(feeds_for(model, 5, n=3))
    plan = {"mm0": "w8a8", "mm1": "w8a8-dynamic", "mm2": "w4a16"}
    write_plan(str(tmp_path / "p.json"), plan, {})
    quantized = mlp(dims=(64, 64, 64, 32), tokens=8)
    apply(quantized, f"annotate-precision{{plan={tmp_path / 'p.json'} bos=true bos-layers=.}},"
          "calibrate{use-cache=false},quant{dynamic-form=onnx}", calib)
    assert sum(n.op_type == "Expand" for n in quantized.graph) == 3  # three precomputed token-0 rows
    proto = ir.to_proto(model).SerializeToString()
    layers = [i for i, n in enumerate(model.graph) if n.op_type == "MatMul"]
    keys = [range_key(model.graph.node(i).inputs[0].name, True) for i in layers]
    amax, _ = probe.activation_amax(model, keys, calib)
    assert amax[keys[0]] < 0.2 * float(np.abs(bos).max())  # token 0's outliers left out of the range
    gated = ir.from_proto(onnx.ModelProto.FromString(proto))
    gates = probe.build_gated(gated, layers, ["w8a8", "w8a8-dynamic", "w4a16"], amax, 32, frozenset({0, 1, 2}))
    held_out = with_bos(feeds_for(model, 99))[0]
    fp = run(model, held_out)
    np.testing.assert_allclose(run(gated, {**held_out, **probe.gate_feeds(gates, {})}), fp, rtol=1e-6, atol=1e-5)
    sim = run(gated, {**held_out, **probe.gate_feeds(gates, dict(enumerate(plan.values())))})
    # The ONNX reference: ORT fuses the w4a16 layer into MatMulNBits (rounds differently),
    # and with graph optimizations off it gets the per-token int8 GEMM wrong.
    real = ReferenceEvaluator(ir.to_proto(quantized)).run(None, held_out)[0]
    assert np.abs(sim - fp).max() > 1e-2
    np.testing.assert_allclose(sim[:, 0], fp[:, 0], rtol=1e-4, atol=1e-3)  # token 0 stays exact
    np.testing.assert_allclose(sim, real, atol=1e-5 * np.abs(fp).max())


def test_sensitivity_probes_bos_layers_as_bos(tmp_path):
    """The pass passes its bos layers to the probe: token 0 costs nothing, so a bos layer's
    measured error is smaller than the same layer probed without bos."""
    def measured(bos: bool) -> list:
        model = mlp(dims=(64, 64, 32), tokens=8)
        feeds = feeds_for(model, 5, n=2)
        for f in feeds:
            f["x"][:, 0, :] = np.random.default_rng(3).standard_normal(64).astype(np.float32) * 30.0
        flag = " bos=true bos-layers=." if bos else ""
        apply(model, f"annotate-precision{{keep-defaults=false{flag}}},"
              "sensitivity{candidates=w8a8 samples=2 metrics=sqnr use-cache=false}", feeds)
        body = json.loads(model.metadata_props[RESULT_KEY])
        return [layer["cost"]["sqnr"][0] for layer in body["layers"]]

    with_bos, without = measured(True), measured(False)
    assert all(b < w for b, w in zip(with_bos, without)), (with_bos, without)


def test_cache_hit_skips_every_run_and_keys_on_settings(tmp_path):
    calib = feeds_for(mlp(), 3, n=2)
    spec = SENS.replace("samples=2", f"samples=2 cache={tmp_path}")
    first, second = mlp(), mlp()
    s1 = apply(first, spec, calib)[1].stats
    s2 = apply(second, spec, calib)[1].stats
    assert (s1["cache"], s2["cache"]) == ("miss", "hit")
    assert s1["runs"] == 3 * 5 * 2 and s2["runs"] == 0
    assert first.metadata_props[RESULT_KEY] == second.metadata_props[RESULT_KEY]
    other = apply(mlp(), spec.replace("w8a8,w4a16,w4a8,fp8,fp16", "w8a8,w4a16"), calib)[1].stats
    assert other["cache"] == "miss" and other["runs"] == 3 * 2 * 2
    changed = apply(mlp(), spec, feeds_for(mlp(), 4, n=2))[1].stats  # other calibration data
    assert changed["cache"] == "miss"
    assert len(list((tmp_path / "sensitivity").iterdir())) == 3


def test_diffusion_metrics_are_decoupled_and_grouped(tmp_path):
    model = _dit_like()
    calib = feeds_for(model, 1, n=2)
    spec = f"annotate-precision{{keep-defaults=false}},sensitivity{{candidates=w8a8,w4a16 cache={tmp_path}}}"
    apply(model, spec, calib)
    body = json.loads(model.metadata_props[RESULT_KEY])
    assert body["family"] == "diffusion" and body["metrics"] == ["sqnr", "content"]
    assert body["groups"] == {"content": ["blk.ff.net"], "sqnr": ["blk.attn1.to_q"]}
    for layer in body["layers"]:
        sq, ct = layer["cost"]["sqnr"], layer["cost"]["content"]
        assert sq[1] > sq[0] > 0 and ct[1] > ct[0] > 0  # int4 weights hurt more than int8, in both
        assert sq != ct  # two measurements, not one reported twice


def test_bad_metric_for_the_output_is_a_user_error(tmp_path):
    with pytest.raises(GenzipError, match="content needs an image-like"):
        apply(mlp(), f"annotate-precision,sensitivity{{metrics=content cache={tmp_path}}}", feeds_for(mlp(), 1))
    with pytest.raises(GenzipError, match="grad needs the PyTorch source"):
        apply(mlp(), f"annotate-precision,sensitivity{{metrics=grad cache={tmp_path}}}", feeds_for(mlp(), 1))
    with pytest.raises(GenzipError, match="candidates must be distinct formats"):
        build_pipeline("annotate-precision,sensitivity{candidates=w8a8,int3}")


def test_requires_annotations():
    with pytest.raises(GenzipError, match="annotate-precision"):
        build_pipeline("sensitivity")


def test_first_order_estimate_is_g_dot_weight_error_in_onnx_layout():
    """LLM-MQ |gᵀ(W − Q(W))|: the gradient of the next-token loss, transposed to the ONNX [K, N] weight."""
    import types

    import torch

    from genzip.passes.precision._grad import first_order

    class TinyLM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(16, 8)
            self.proj = torch.nn.Linear(8, 16, bias=False)

        def forward(self, input_ids, attention_mask=None):
            return types.SimpleNamespace(logits=self.proj(torch.tanh(self.embed(input_ids))))

    torch.manual_seed(0)
    lm = TinyLM()
    ids = np.random.default_rng(0).integers(0, 16, (1, 12)).astype(np.int64)
    w_onnx = lm.proj.weight.detach().numpy().T.copy()  # the exporter's MatMul weight [K, N]
    err = {"w4a16": np.random.default_rng(1).standard_normal(w_onnx.shape).astype(np.float32) * 1e-2}
    got = first_order(lm, [("proj", w_onnx), ("missing.layer", w_onnx)], [err, err], [{"input_ids": ids}])
    logits = lm(torch.from_numpy(ids)).logits
    loss = torch.nn.functional.cross_entropy(logits[0, :-1], torch.from_numpy(ids)[0, 1:])
    (g,) = torch.autograd.grad(loss, [lm.proj.weight])
    assert got[0]["w4a16"] == pytest.approx(abs(float((g.numpy().T * err["w4a16"]).sum())), rel=1e-5)
    assert got[1] is None  # no module at that path: no estimate, counted as unmeasured
