"""genzip's fusions on ORT's optimized graph: a W8A8 GEMM's bias Add folds into MatMulIntegerToFloat."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnx.helper as oh
import onnx_ir as ir
import onnxruntime as ort
import pytest
from quant_models import apply, feeds_for

from genzip.backends.ort_backend import optimize_file
from genzip.backends.ort_fusions import fuse_integer_gemm_bias
from genzip.ort_session import DISABLED_OPTIMIZERS, make_session, session_options

F = onnx.TensorProto.FLOAT


def biased_mlp() -> ir.Model:
    """x -> (MatMul + bias) -> Relu -> (MatMul + bias) -> + x (a residual Add that must stay) -> y."""
    rng = np.random.default_rng(0)
    inits = [onnx.numpy_helper.from_array((rng.standard_normal(s) * 0.2).astype(np.float32), n)
             for n, s in (("w0", (16, 32)), ("b0", (32,)), ("w1", (32, 16)), ("b1", (16,)))]
    nodes = [
        oh.make_node("MatMul", ["x", "w0"], ["m0"], name="mm0"), oh.make_node("Add", ["m0", "b0"], ["a0"]),
        oh.make_node("Relu", ["a0"], ["h0"]),
        oh.make_node("MatMul", ["h0", "w1"], ["m1"], name="mm1"), oh.make_node("Add", ["b1", "m1"], ["a1"]),
        oh.make_node("Add", ["a1", "x"], ["y"]),
    ]
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", F, [2, 8, 16])],
                          [oh.make_tensor_value_info("y", F, [2, 8, 16])], inits)
    return ir.from_proto(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 23)]))


def _ops(model: ir.Model) -> list[str]:
    return [n.op_type for n in model.graph]


def _optimized(tmp_path) -> tuple[str, str]:
    model = biased_mlp()
    apply(model, "annotate-precision{keep-defaults=false},calibrate,quant{scheme=w8a8}",
          feeds_for(model, seed=1, n=4))
    src, dst = str(tmp_path / "q.onnx"), str(tmp_path / "q.ort.onnx")
    ir.save(model, src)
    return src, dst


def test_bias_adds_fold_into_integer_gemms_bit_exactly(tmp_path):
    src, dst = _optimized(tmp_path)
    assert optimize_file(src, dst) == ["q.ort.onnx"]
    fused = ir.load(dst)
    gemms = [n for n in fused.graph if n.op_type == "MatMulIntegerToFloat"]
    assert len(gemms) == 2 and all(len(n.inputs) == 7 and n.inputs[6] is not None for n in gemms)
    assert _ops(fused).count("Add") == 1  # only the residual Add, whose other input is not constant
    assert [v.name for v in fused.graph.outputs] == ["y"]

    # Reference: ORT's own optimized graph, without genzip's fusion.
    opts = session_options(level="extended")
    opts.optimized_model_filepath = str(tmp_path / "plain.onnx")
    ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"], disabled_optimizers=DISABLED_OPTIMIZERS)
    plain = ir.load(str(tmp_path / "plain.onnx"))
    assert _ops(plain).count("Add") == 3 and _ops(plain).count("MatMulIntegerToFloat") == 2
    feeds = feeds_for(biased_mlp(), seed=7)[0]
    run = lambda p: make_session(p).run(None, feeds)[0]  # noqa: E731
    np.testing.assert_array_equal(run(dst), run(str(tmp_path / "plain.onnx")))


def test_static_shape_int8_model_loads(tmp_path):
    """ORT 1.32's MatMulAddFusion breaks static-shape int8 Q/DQ graphs; genzip sessions turn it off."""
    src, _ = _optimized(tmp_path)
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.Fail, match="zero_point"):
        ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    assert make_session(src).run(None, feeds_for(biased_mlp(), seed=3)[0])[0].shape == (2, 8, 16)


def test_nothing_to_fuse_in_a_float_model(tmp_path):
    path = str(tmp_path / "f.onnx")
    ir.save(biased_mlp(), path)
    optimize_file(path, str(tmp_path / "f.ort.onnx"))
    assert fuse_integer_gemm_bias(ir.load(str(tmp_path / "f.ort.onnx"))) == 0


def test_fusion_is_idempotent(tmp_path):
    src, dst = _optimized(tmp_path)
    optimize_file(src, dst)
    model = ir.load(dst)
    assert fuse_integer_gemm_bias(model) == 0
    assert os.path.getsize(dst) > 0
