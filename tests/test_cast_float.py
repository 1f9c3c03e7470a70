"""--dtype / cast-float: fp16 artifacts of a tiny preset (alone and after w8a8) run on ORT's CPU
provider and keep cosine >= 0.999 vs float32 eager PyTorch; ops ORT or ONNX cannot run in the
dtype stay float32 between Casts; bf16 that ORT's CPU provider cannot run is a one-line error."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from helpers_onnx import run_ort

import genzip
from genzip.compile import CompileOptions, compile_source, with_dtype
from genzip.errors import GenzipError
from genzip.frontend.loader import load_model
from genzip.metrics import cosine
from genzip.passes import get_pass_class
from genzip.passes.precision.cast_float import CastFloatOptions, cast_feeds
from genzip.recipes import expand_recipe
from genzip.tools import compile_cli

FP16_MIN_COSINE = 0.999


@pytest.fixture(scope="module")
def pixart_fp16(tmp_path_factory):
    """tiny-pixart compiled with w8a8 then fp16 (cast-float alone is covered by the graph test below)."""
    source = load_model("tiny-pixart")
    root = tmp_path_factory.mktemp("fp16")
    out = {}
    for name, passes in {"w8a8-fp16": expand_recipe("w8a8", "")}.items():
        copy = source.copy()
        compile_source(copy, str(root / name), CompileOptions(target="ort", passes=passes, dtype="fp16"))
        out[name] = str(root / name)
    return out


@pytest.mark.parametrize("name", ["w8a8-fp16"])
def test_fp16_artifacts_run_on_cpu_and_match_fp32_eager(pixart_fp16, pixart_ort, name):
    folder = pixart_fp16[name]
    model = genzip.load(folder, providers="cpu")
    manifest = model.manifest
    assert manifest["passes"].endswith("cast-float{dtype=fp16}")
    assert {s["name"]: s["dtype"] for s in manifest["inputs"]} == {
        "hidden_states": "float16", "timestep": "float16", "encoder_hidden_states": "float16",
        "encoder_attention_mask": "int64"}  # a keep-mask: integers, not converted
    # The gate compared the fp16 artifact with float32 eager PyTorch.
    assert manifest["fidelity"]["reference"] == "pytorch-eager"
    assert manifest["fidelity"]["cosine"] >= FP16_MIN_COSINE
    # And on its own: the fp16 artifact vs the fp32 artifact of the same seed, on fp32 inputs.
    fp32 = genzip.load(pixart_ort[0])
    feeds = dict(np.load(os.path.join(pixart_ort[0], "inputs.npz")))
    half = {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in feeds.items()}  # the mask stays int64
    (got,) = model.run(half).values()
    (want,) = fp32.run(feeds).values()
    assert got.dtype == np.float16 and cosine(got, want) >= FP16_MIN_COSINE
    if name == "w8a8-fp16":
        assert manifest["quant_fidelity"]["cosine"] >= FP16_MIN_COSINE
        m = onnx.load(os.path.join(folder, "model.onnx"))
        scales = {i.name: i.data_type for i in m.graph.initializer}
        dq = [n for n in m.graph.node if n.op_type == "DequantizeLinear"]
        assert dq and all(scales.get(n.input[1]) == onnx.TensorProto.FLOAT16 for n in dq)


def _graph_with_kept_ops() -> ir.Model:
    """x -> Einsum -> CumSum -> If(Constant * h) -> Cast(to=float) -> y, all float32."""
    then_g = onnx.helper.make_graph(
        [onnx.helper.make_node("Constant", [], ["k"], value=onnx.numpy_helper.from_array(np.float32(2.0), "k")),
         onnx.helper.make_node("Mul", ["c", "k"], ["t"])], "then", [], [onnx.helper.make_tensor_value_info("t", 1, None)])
    else_g = onnx.helper.make_graph(
        [onnx.helper.make_node("Neg", ["c"], ["e"])], "else", [], [onnx.helper.make_tensor_value_info("e", 1, None)])
    nodes = [
        onnx.helper.make_node("Einsum", ["x", "w"], ["h"], equation="ij,jk->ik"),
        onnx.helper.make_node("CumSum", ["h", "axis"], ["c"]),
        onnx.helper.make_node("If", ["flag"], ["b"], then_branch=then_g, else_branch=else_g),
        onnx.helper.make_node("Cast", ["b"], ["y"], to=onnx.TensorProto.FLOAT),
    ]
    graph = onnx.helper.make_graph(
        nodes, "g", [onnx.helper.make_tensor_value_info("x", 1, [2, 4]), onnx.helper.make_tensor_value_info("flag", 9, [])],
        [onnx.helper.make_tensor_value_info("y", 1, [2, 3]), onnx.helper.make_tensor_value_info("c", 1, [2, 3])],
        [onnx.numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32), "w"),
         onnx.numpy_helper.from_array(np.int64(1), "axis")])
    return ir.from_proto(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 23)]))


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_cast_float_converts_subgraphs_and_keeps_unsupported_ops_float32(dtype):
    model = _graph_with_kept_ops()
    feeds = {"x": np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32), "flag": np.array(True)}
    want = run_ort(model, feeds)
    result = get_pass_class("cast-float")(CastFloatOptions(dtype=dtype))(model)
    assert result.modified and result.stats["kept_float32"] == (2 if dtype == "bf16" else 1)  # + Einsum in bf16
    wanted = ir.DataType.FLOAT16 if dtype == "fp16" else ir.DataType.BFLOAT16
    assert [v.name for v in model.graph.outputs] == ["y", "c"]  # a kept op's graph output keeps its name
    assert all(v.dtype == wanted for v in (*model.graph.inputs[:1], *model.graph.outputs))
    cumsum = next(n for n in model.graph if n.op_type == "CumSum")
    assert cumsum.inputs[0].dtype == cumsum.outputs[0].dtype == ir.DataType.FLOAT
    onnx.checker.check_model(ir.to_proto(model), full_check=True)
    if dtype == "fp16":  # ORT's CPU provider runs this fp16 graph (not the bf16 one)
        got = run_ort(model, cast_feeds(model, feeds))
        for a, b in zip(got, want):
            assert a.dtype == np.float16 and cosine(a, b) > 0.999


def test_inputs_the_schema_types_float32_stay_float32():
    """Resize's scales are tensor(float) in its schema (not a type variable): fed through a Cast
    back to float32, so the fp16 graph passes strict shape inference and runs in ORT."""
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest")], "g",
        [onnx.helper.make_tensor_value_info("x", 1, [1, 2, 3, 3])], [onnx.helper.make_tensor_value_info("y", 1, None)],
        [onnx.numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")])
    model = ir.from_proto(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 23)]))
    feeds = {"x": np.random.default_rng(2).standard_normal((1, 2, 3, 3)).astype(np.float32)}
    (want,) = run_ort(model, feeds)
    pass_ = get_pass_class("cast-float")(CastFloatOptions(dtype="fp16"))
    result = pass_(model)
    pass_.ensures(model)
    resize = next(n for n in model.graph if n.op_type == "Resize")
    assert result.stats["casts_inserted"] == 1 and resize.inputs[2].dtype == ir.DataType.FLOAT
    onnx.checker.check_model(ir.to_proto(model), full_check=True)
    (got,) = run_ort(model, cast_feeds(model, feeds))
    assert got.dtype == np.float16 and got.shape == (1, 2, 6, 6) and np.abs(got - want).max() < 1e-2


def test_a_model_without_float32_is_a_noop_error():
    graph = onnx.helper.make_graph([onnx.helper.make_node("Neg", ["x"], ["y"])], "g",
                                   [onnx.helper.make_tensor_value_info("x", 7, [2])],
                                   [onnx.helper.make_tensor_value_info("y", 7, [2])])
    model = ir.from_proto(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 23)]))
    from genzip.passes import build_pipeline, run_pipeline
    from genzip.passes.infra.manager import Instrumentation

    with pytest.raises(GenzipError, match="no float32 tensor to convert"):
        run_pipeline(model, build_pipeline(with_dtype("", "fp16")), Instrumentation())


def test_bf16_that_ort_cpu_cannot_run_is_one_line_exit_2(tmp_path, capsys):
    x = onnx.helper.make_tensor_value_info("x", 1, [1, 2, 4, 4])
    w = onnx.numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float32), "w")
    graph = onnx.helper.make_graph([onnx.helper.make_node("Conv", ["x", "w"], ["y"])], "g", [x],
                                   [onnx.helper.make_tensor_value_info("y", 1, [1, 2, 4, 4])], [w])
    path = tmp_path / "conv.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 23)]), path)
    out = tmp_path / "a"
    rc = compile_cli.main([str(path), "--out", str(out), "--dtype", "bf16", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and not out.exists()
    assert "cannot run the bf16 model" in err and "Conv" in err and "--dtype fp16" in err
    rc = compile_cli.main([str(path), "--out", str(out), "--dtype", "fp16", "--quiet"])
    assert rc == 0 and genzip.load(str(out)).run({"x": np.ones((1, 2, 4, 4), np.float16)})["y"].dtype == np.float16
