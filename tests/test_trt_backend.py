"""TensorRT backend pieces that run without TensorRT: --shapes profiles, the parser-prepared copy,
the gate's errors, and the plugins' reference math against the genzip function bodies."""

from __future__ import annotations

import os
import sys

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from genzip.backends import trt_backend
from genzip.backends.trt_build import prepare_parser_model
from genzip.backends.trt_profiles import ShapeRange, parse_shapes, resolve_profiles
from genzip.errors import GenzipError

INPUTS = [
    {"name": "hidden_states", "shape": ["batch", 4, "h", "w"], "dtype": "float32"},
    {"name": "timestep", "shape": ["batch"], "dtype": "float32"},
]
EXAMPLES = {"hidden_states": (2, 4, 16, 16), "timestep": (2,)}


def test_parse_shapes_fixed_ranges_quotes_and_scalars():
    profile = parse_shapes("x:1x4x64x64:2x4x64x64:4x4x128x128, 'in:0,a':3x2 ,s:")
    assert profile["x"] == ShapeRange((1, 4, 64, 64), (2, 4, 64, 64), (4, 4, 128, 128))
    assert profile["in:0,a"] == ShapeRange((3, 2), (3, 2), (3, 2))
    assert profile["s"] == ShapeRange((), (), ())


@pytest.mark.parametrize("spec, needle", [
    ("x", "no ':'"),
    ("x:1x2:3x4", "has 2 shapes"),
    ("x:1xa", "not a shape"),
    ("x:2:1:3", "min <= opt <= max"),
    ("x:1x2:1x2:1", "different ranks"),
    ("x:1,x:2", "twice"),
    ("x:1,,y:2", "empty entry"),
    ("'x:1", "unclosed quote"),
    ("", "empty"),
])
def test_parse_shapes_errors_are_genzip_errors(spec, needle):
    with pytest.raises(GenzipError, match=needle):
        parse_shapes(spec)


def test_default_profile_from_manifest_symbolic_dims():
    (profile,) = resolve_profiles([], INPUTS, EXAMPLES)
    assert profile["hidden_states"] == ShapeRange((1, 4, 1, 1), (2, 4, 16, 16), (4, 4, 32, 32))
    assert profile["timestep"] == ShapeRange((1,), (2,), (4,))


def test_given_shapes_complete_each_profile_and_are_checked():
    profiles = resolve_profiles(["hidden_states:1x4x32x32:2x4x64x64:2x4x64x64", "timestep:8"], INPUTS, EXAMPLES)
    assert len(profiles) == 2
    assert profiles[0]["hidden_states"].opt == (2, 4, 64, 64) and profiles[0]["timestep"].opt == (2,)
    assert profiles[1]["timestep"] == ShapeRange((8,), (8,), (8,))
    assert profiles[1]["hidden_states"].max == (4, 4, 32, 32)
    with pytest.raises(GenzipError, match="did you mean: hidden_states"):
        resolve_profiles(["hidden_state:1x4x8x8"], INPUTS, EXAMPLES)
    with pytest.raises(GenzipError, match="fixes it to 4"):
        resolve_profiles(["hidden_states:1x3x8x8"], INPUTS, EXAMPLES)
    with pytest.raises(GenzipError, match="rank 3"):
        resolve_profiles(["hidden_states:1x4x8"], INPUTS, EXAMPLES)
    with pytest.raises(GenzipError, match="no example value"):
        resolve_profiles([], INPUTS, {})


def _plugin_model() -> ir.Model:
    """Window attention twice (plain and residual) plus an Attention with default softcap."""
    from genzip.plugins import window_attention

    q = ir.Value(name="q", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([1, 2, 40, 8]))
    graph = ir.Graph([q], [], nodes=[], opset_imports={"": 23}, name="g")
    model = ir.Model(graph, ir_version=10)
    plain = window_attention.make_node(model, [q, q, q], window=3, scale=0.3, chunk=16, name="wa")
    resid = window_attention.make_node(model, [q, q, q], window=3, scale=0.3, chunk=16, residual=True, name="wr")
    attn = ir.Node("", "Attention", [q, q, q], ir.convenience.convert_attributes(
        {"softcap": 0.0, "qk_matmul_output_mode": 0, "scale": 0.3}), name="attn")
    for node in (plain, resid, attn):
        graph.append(node)
    for i, out in enumerate([plain.outputs[0], *resid.outputs, attn.outputs[0]]):
        out.name, out.dtype, out.shape = f"y{i}", ir.DataType.FLOAT, ir.Shape([1, 2, 40, 8])
        graph.outputs.append(out)
    return model


def test_parser_copy_maps_genzip_nodes_to_plugins_and_drops_bodies():
    model = _plugin_model()
    assert len(model.functions) == 2
    stats = prepare_parser_model(model, (10, 15), aot=True)
    assert stats == {"plugin_nodes": 2, "functions_removed": 2, "attention_attrs_dropped": 2}
    assert not model.functions
    by_name = {n.name: n for n in model.graph}
    assert by_name["wa"].op_type == "WindowAttention" and by_name["wr"].op_type == "WindowAttentionResidual"
    for name in ("wa", "wr"):
        node = by_name[name]
        assert node.domain == "genzip" and node.overload == ""
        assert node.attributes["plugin_namespace"].value == "genzip" and node.attributes["aot"].value == 1
        assert {"window", "chunk", "scale"} <= set(node.attributes)
    assert set(by_name["attn"].attributes) == {"scale"}
    onnx.checker.check_model(ir.to_proto(model))


def test_parser_copy_before_10_6_keeps_bodies_for_inlining():
    model = _plugin_model()
    stats = prepare_parser_model(model, (10, 5))
    assert stats["plugin_nodes"] == 0 and len(model.functions) == 2


def test_gate_without_tensorrt_names_the_install_and_the_gpu(monkeypatch):
    monkeypatch.setattr(trt_backend, "tensorrt_available", lambda: False)
    with pytest.raises(GenzipError) as e:
        trt_backend.require_tensorrt()
    assert "pip install genzip[trt]" in str(e.value) and "NVIDIA GPU" in str(e.value)
    monkeypatch.setattr(trt_backend, "tensorrt_available", lambda: True)
    monkeypatch.setattr(trt_backend, "gpu_available", lambda: False)
    with pytest.raises(GenzipError, match="NVIDIA GPU and driver") as e:
        trt_backend.require_tensorrt()
    assert "pip install genzip[trt]" in str(e.value)


def test_plugin_module_imports_without_tensorrt():
    import genzip.plugins.trt_plugins  # noqa: F401

    assert "tensorrt" not in sys.modules or trt_backend.tensorrt_available()


def _run_function_body(node_maker, shape, kv_shape, **attrs) -> tuple[np.ndarray, list[np.ndarray]]:
    """Run one genzip node in ORT (which inlines its function body) on random Q, K, V."""
    values = [ir.Value(name=n, type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape(s))
              for n, s in (("q", shape), ("k", kv_shape), ("v", kv_shape))]
    graph = ir.Graph(values, [], nodes=[], opset_imports={"": 23}, name="g")
    model = ir.Model(graph, ir_version=10)
    node = node_maker(model, values, **attrs)
    graph.append(node)
    node.outputs[0].name, node.outputs[0].dtype = "y", ir.DataType.FLOAT
    graph.outputs.append(node.outputs[0])
    rng = np.random.default_rng(0)
    feeds = [rng.standard_normal(s).astype(np.float32) for s in (shape, kv_shape, kv_shape)]
    sess = ort.InferenceSession(ir.to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, dict(zip("qkv", feeds)))[0], feeds


def test_plugin_reference_math_matches_the_function_bodies():
    torch = pytest.importorskip("torch")
    from genzip.plugins import span_attention, trt_plugins, window_attention

    y, (q, k, v) = _run_function_body(window_attention.make_node, (1, 4, 37, 8), (1, 2, 37, 8),
                                      window=5, scale=0.3, chunk=16, group=2)
    ref = trt_plugins.attend(*(torch.from_numpy(a) for a in (q, k, v)), 0.3, trt_plugins.window_mask(torch, 37, 5))
    np.testing.assert_allclose(ref.numpy(), y, rtol=1e-4, atol=1e-5)

    spans = [3, 8, 3, 20]
    y, (q, k, v) = _run_function_body(span_attention.make_node, (1, 4, 29, 8), (1, 2, 29, 8),
                                      spans=spans, sinks=2, scale=0.25, kv_heads=2)
    mask = trt_plugins.span_mask(torch, 29, spans, 2)
    ref = trt_plugins.attend(*(torch.from_numpy(a) for a in (q, k, v)), 0.25, mask)
    np.testing.assert_allclose(ref.numpy(), y, rtol=1e-4, atol=1e-5)


@pytest.mark.trt
@pytest.mark.gpu
def test_engine_builds_for_a_tiny_artifact(tmp_path, monkeypatch):
    pytest.importorskip("tensorrt", reason="TensorRT not installed here: the registry's wheels need an NVIDIA driver")
    if not trt_backend.gpu_available():
        pytest.skip("TensorRT cannot open a GPU on this machine")
    import onnx.parser

    from genzip.backends.trt_build import TrtBuildOptions, build_engine

    proto = onnx.parser.parse_model('<ir_version: 10, opset_import: ["" : 23]>\n'
                                    'g (float[N,4,8,16] q) => (float[N,4,8,16] y) {'
                                    ' y = Attention <scale: float = 0.25> (q, q, q) }')
    onnx.save(proto, tmp_path / "model.onnx")
    monkeypatch.setenv("GENZIP_CACHE_DIR", str(tmp_path / "cache"))
    inputs = [{"name": "q", "shape": ["N", 4, 8, 16], "dtype": "float32"}]
    lines: list[str] = []
    names, section = build_engine(str(tmp_path), "model.onnx", inputs, {"q": (2, 4, 8, 16)},
                                  TrtBuildOptions(precision="fp32", workspace_gib=1), lines.append)
    assert "model.engine" in names and (tmp_path / "model.engine").stat().st_size > 0
    assert section["profiles"][0]["q"]["max"] == [4, 4, 8, 16]
    assert any(line.startswith("TensorRT: ") for line in lines)  # the progress monitor reported
    # The timing cache lives in the user cache dir and the next build (a --force rebuild) reads it.
    cache = section["timing_cache"]["path"]
    assert cache.startswith(str(tmp_path / "cache")) and section["timing_cache"]["reused_bytes"] == 0
    _, again = build_engine(str(tmp_path), "model.onnx", inputs, {"q": (2, 4, 8, 16)},
                            TrtBuildOptions(precision="fp32", workspace_gib=1))
    assert again["timing_cache"] == {"path": cache, "reused_bytes": os.path.getsize(cache)} and os.path.getsize(cache)


def test_timing_cache_is_keyed_by_tensorrt_version_and_gpu_and_replaced_atomically(tmp_path, monkeypatch):
    from genzip.backends import trt_timing_cache as tc

    monkeypatch.setenv("GENZIP_CACHE_DIR", str(tmp_path))
    h200 = tc.default_path("10.15.1.29", "NVIDIA H200", "9.0")
    assert h200 == str(tmp_path / "tensorrt" / "timing-10.15.1.29-NVIDIA-H200-sm90.cache")
    # another TensorRT version or GPU never reads this cache
    assert len({h200, tc.default_path("10.14.1", "NVIDIA H200", "9.0"), tc.default_path("10.15.1.29", "NVIDIA L4", "8.9"),
                tc.default_path("10.15.1.29", "NVIDIA H200", "9.0", cache_dir=str(tmp_path / "other"))}) == 4
    assert tc.read(h200) == b""  # none yet: TensorRT's empty cache
    tc.write(h200, b"timings")
    tc.write(h200, b"timings-2")
    assert tc.read(h200) == b"timings-2" and os.listdir(os.path.dirname(h200)) == [os.path.basename(h200)]


def test_build_progress_reports_outer_phases_only():
    from genzip.backends.trt_progress import BuildProgress

    lines: list[str] = []
    p = BuildProgress(lines.append)
    p.phase_start("Building engine", None, 2)
    p.phase_start("Tactic selection", "Building engine", 3)
    p.phase_start("Timing layer 7", "Tactic selection", 40)  # depth 2: too deep to report
    assert all(p.step_complete("Timing layer 7", i) for i in range(40))
    p.phase_finish("Timing layer 7")
    assert p.step_complete("Tactic selection", 0) and p.step_complete("Building engine", 0)
    assert lines == ["TensorRT: Building engine 0/2", "TensorRT: Tactic selection 0/3",
                     "TensorRT: Tactic selection 1/3", "TensorRT: Building engine 1/2"]


def test_plugin_form_is_aot_where_tensorrt_and_triton_allow(monkeypatch):
    import importlib.util

    from genzip.backends.trt_build import resolve_plugin_form

    real = importlib.util.find_spec
    has_triton = real("triton") is not None
    assert resolve_plugin_form("auto", (10, 15)) == ("aot" if has_triton else "jit")
    assert resolve_plugin_form("auto", (10, 8)) == "jit"  # before AOT Python plugins
    assert resolve_plugin_form("jit", (10, 15)) == "jit"
    with pytest.raises(GenzipError, match="--plugin-form aot needs TensorRT >= 10.9"):
        resolve_plugin_form("aot", (10, 8))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "triton" else real(name, *a))
    assert resolve_plugin_form("auto", (10, 15)) == "jit"
