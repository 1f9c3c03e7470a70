"""The Triton kernels behind genzip's TensorRT plugins, against the ONNX function bodies run in ORT.

Without CUDA the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, set
here before the kernels are first imported) on CPU tensors, at tiny shapes; with
CUDA the same tests run the compiled kernels. ``gpu`` tests need CUDA. The PTX test
compiles for sm_90 / sm_80 in a subprocess, since the interpreter replaces
``triton.jit`` for the whole process.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")
if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed (it comes with `pip install -e .[dev]`)", allow_module_level=True)

CUDA = torch.cuda.is_available()
_saved_interpret = os.environ.get("TRITON_INTERPRET")
if not CUDA:
    if "genzip.plugins.triton_common" in sys.modules and _saved_interpret != "1":
        pytest.skip("the Triton kernels were imported earlier in this process without TRITON_INTERPRET=1 "
                    "and there is no GPU to compile them for", allow_module_level=True)
    # Read when @triton.jit runs (the kernel modules' first import) and again by Triton's
    # interpreter at launch, so it stays set for the session; no other test uses Triton.
    os.environ["TRITON_INTERPRET"] = "1"

from genzip.plugins import span_attention as span_op  # noqa: E402
from genzip.plugins import trt_plugins  # noqa: E402
from genzip.plugins import window_attention as window_op  # noqa: E402
from genzip.plugins.triton_common import BlockConfig  # noqa: E402
from genzip.plugins.triton_span import span_attention  # noqa: E402
from genzip.plugins.triton_window import window_attention  # noqa: E402

DEVICE = "cuda" if CUDA else "cpu"


def _qkv(b, hq, hkv, n, d, dv=None, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32)
            for s in ((b, hq, n, d), (b, hkv, n, d), (b, hkv, n, dv or d))]


def _onnx_body(make_node, feeds, n_outputs=1, **attrs) -> list[np.ndarray]:
    """Run one genzip node in ORT, which inlines its standard-op function body."""
    values = [ir.Value(name=name, type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape(a.shape))
              for name, a in zip("qkv", feeds)]
    graph = ir.Graph(values, [], nodes=[], opset_imports={"": 23}, name="g")
    model = ir.Model(graph, ir_version=10)
    node = make_node(model, values, **attrs)
    graph.append(node)
    for i, out in enumerate(node.outputs[:n_outputs]):
        out.name, out.dtype = f"y{i}", ir.DataType.FLOAT
        graph.outputs.append(out)
    sess = ort.InferenceSession(ir.to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, dict(zip("qkv", feeds)))


def _t(a, dtype=torch.float32):
    return torch.from_numpy(a).to(device=DEVICE, dtype=dtype)


def _np(t):
    return t.float().cpu().numpy()


@pytest.mark.parametrize("b, hq, hkv, n, d, window", [
    (1, 2, 2, 37, 16, 5),     # N not a multiple of the 16-row blocks
    (2, 4, 2, 50, 8, 0),      # window 0 (only itself), GQA 2:1, batch 2
    (1, 2, 1, 33, 32, 3),     # all query heads on one KV head
    (1, 2, 2, 40, 16, 39),    # w >= N - 1: the window covers everything
    (1, 1, 1, 70, 16, 17),    # band crosses several key blocks on both sides
])
def test_window_kernel_matches_onnx_body_and_residual(b, hq, hkv, n, d, window):
    feeds = _qkv(b, hq, hkv, n, d)
    y_ref, r_ref = _onnx_body(window_op.make_node, feeds, 2, window=window, scale=0.3, chunk=16,
                              residual=True, group=hq // hkv)
    y, r = window_attention(*map(_t, feeds), window=window, scale=0.3, residual=True)
    np.testing.assert_allclose(_np(y), y_ref, rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(_np(r), r_ref, rtol=1e-4, atol=2e-5)
    q, k, v = (torch.from_numpy(a) for a in feeds)
    masked = trt_plugins.attend(q, k, v, 0.3, trt_plugins.window_mask(torch, n, window))
    np.testing.assert_allclose(_np(y), masked.numpy(), rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(_np(y) + _np(r), trt_plugins.attend(q, k, v, 0.3, None).numpy(), rtol=1e-4, atol=3e-5)
    y_only = window_attention(*map(_t, feeds), window=window, scale=0.3)
    np.testing.assert_array_equal(_np(y_only), _np(y))
    if window >= n - 1:
        np.testing.assert_allclose(_np(r), 0.0, atol=2e-5)


@pytest.mark.parametrize("b, hkv, n, d, spans, sinks", [
    (1, 2, 37, 16, [3, 8, 3, 20], 2),        # GQA 2:1, spans differ within a KV head
    (2, 1, 50, 8, [1, 50], 0),               # span 1 (only itself) and full causal, no sinks
    (1, 4, 45, 16, [5, 17, 40, 2], 19),      # sinks span more than one key block
    (1, 1, 29, 16, [4, 4, 4], 40),           # sinks >= N: dense causal
])
def test_span_kernel_matches_onnx_body(b, hkv, n, d, spans, sinks):
    feeds = _qkv(b, len(spans), hkv, n, d, seed=1)
    (y_ref,) = _onnx_body(span_op.make_node, feeds, spans=spans, sinks=sinks, scale=0.25, kv_heads=hkv)
    y = span_attention(*map(_t, feeds), spans=spans, sinks=sinks, scale=0.25)
    np.testing.assert_allclose(_np(y), y_ref, rtol=1e-4, atol=2e-5)
    q, k, v = (torch.from_numpy(a) for a in feeds)
    masked = trt_plugins.attend(q, k, v, 0.25, trt_plugins.span_mask(torch, n, spans, sinks))
    np.testing.assert_allclose(_np(y), masked.numpy(), rtol=1e-4, atol=2e-5)


def test_band_edges_on_and_off_block_boundaries():
    """Windows and spans around multiples of the 16-key blocks, where the masked edge blocks
    and the mask-free interior blocks meet."""
    n = 53
    q, k, v = (torch.from_numpy(a) for a in _qkv(1, 2, 1, n, 16, seed=7))
    for window in (1, 15, 16, 17, 31, 52):
        y = window_attention(q.to(DEVICE), k.to(DEVICE), v.to(DEVICE), window=window, scale=0.3)
        ref = trt_plugins.attend(q, k, v, 0.3, trt_plugins.window_mask(torch, n, window))
        np.testing.assert_allclose(_np(y), ref.numpy(), rtol=1e-4, atol=2e-5, err_msg=f"window {window}")
    for spans, sinks in (([16, 17], 16), ([15, 32], 1), ([33, 53], 0)):
        y = span_attention(q.to(DEVICE), k.to(DEVICE), v.to(DEVICE), spans=spans, sinks=sinks, scale=0.3)
        ref = trt_plugins.attend(q, k, v, 0.3, trt_plugins.span_mask(torch, n, spans, sinks))
        np.testing.assert_allclose(_np(y), ref.numpy(), rtol=1e-4, atol=2e-5, err_msg=f"spans {spans}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_match_fp32_reference(dtype):
    if dtype == torch.bfloat16 and not CUDA:
        pytest.skip("Triton's interpreter computes tl.dot on bfloat16 wrongly (numpy has no bfloat16); "
                    "the PTX test compiles bf16 and the gpu test runs it")
    feeds = _qkv(1, 2, 1, 41, 16, seed=2)
    rounded = [torch.from_numpy(a).to(dtype).float() for a in feeds]
    tol = 2e-2 if dtype == torch.float16 else 5e-2
    y = window_attention(*(_t(a, dtype) for a in feeds), window=6, scale=0.25)
    assert y.dtype == dtype
    ref = trt_plugins.attend(*rounded, 0.25, trt_plugins.window_mask(torch, 41, 6))
    np.testing.assert_allclose(_np(y), ref.numpy(), rtol=tol, atol=tol)
    y = span_attention(*(_t(a, dtype) for a in feeds), spans=[7, 30], sinks=3, scale=0.25)
    ref = trt_plugins.attend(*rounded, 0.25, trt_plugins.span_mask(torch, 41, [7, 30], 3))
    np.testing.assert_allclose(_np(y), ref.numpy(), rtol=tol, atol=tol)


def test_odd_head_dims_and_value_dim_differs():
    feeds = _qkv(1, 2, 2, 23, 12, dv=20, seed=3)
    q, k, v = (torch.from_numpy(a) for a in feeds)
    y = window_attention(*map(_t, feeds), window=4, scale=0.3)
    assert tuple(y.shape) == (1, 2, 23, 20)
    ref = trt_plugins.attend(q, k, v, 0.3, trt_plugins.window_mask(torch, 23, 4))
    np.testing.assert_allclose(_np(y), ref.numpy(), rtol=1e-4, atol=2e-5)
    y = span_attention(*map(_t, feeds), spans=[2, 9], sinks=1, scale=0.3)
    ref = trt_plugins.attend(q, k, v, 0.3, trt_plugins.span_mask(torch, 23, [2, 9], 1))
    np.testing.assert_allclose(_np(y), ref.numpy(), rtol=1e-4, atol=2e-5)


def test_block_shape_does_not_change_the_result():
    feeds = _qkv(1, 2, 2, 45, 16, seed=4)
    small = window_attention(*map(_t, feeds), window=9, scale=0.3, config=BlockConfig(16, 16, 1, 1))
    wide = window_attention(*map(_t, feeds), window=9, scale=0.3, config=BlockConfig(32, 16, 1, 1))
    np.testing.assert_allclose(_np(small), _np(wide), rtol=1e-5, atol=1e-6)


def test_writes_into_given_outputs_and_rejects_bad_inputs():
    q, k, v = map(_t, _qkv(1, 2, 1, 19, 16, seed=5))
    out = torch.full((1, 2, 19, 16), float("nan"), device=DEVICE)
    assert span_attention(q, k, v, spans=[3, 19], sinks=0, scale=0.3, out=out) is out
    assert not torch.isnan(out).any()
    with pytest.raises(ValueError, match="window must be >= 0"):
        window_attention(q, k, v, window=-1)
    with pytest.raises(ValueError, match="1 spans for 2 query heads"):
        span_attention(q, k, v, spans=[3], sinks=0)
    with pytest.raises(ValueError, match="spans must be in"):
        span_attention(q, k, v, spans=[0, 3], sinks=0)
    with pytest.raises(ValueError, match="share one of"):
        window_attention(q, k.half(), v, window=1)
    with pytest.raises(ValueError, match="bad shapes"):
        window_attention(q, k[:, :, :5], v, window=1)


@pytest.mark.gpu
def test_compiled_kernels_at_scale_match_the_onnx_bodies():
    if not CUDA:
        pytest.skip("needs a CUDA GPU (the interpreter tests above cover the kernels on CPU)")
    feeds = _qkv(1, 8, 2, 1000, 64, seed=6)
    y_ref, r_ref = _onnx_body(window_op.make_node, feeds, 2, window=100, scale=0.125, chunk=64,
                              residual=True, group=4)
    for dtype, tol in ((torch.float32, 2e-4), (torch.float16, 2e-2), (torch.bfloat16, 5e-2)):
        y, r = window_attention(*(_t(a, dtype) for a in feeds), window=100, scale=0.125, residual=True)
        np.testing.assert_allclose(_np(y), y_ref, rtol=tol, atol=tol)
        np.testing.assert_allclose(_np(r), r_ref, rtol=tol, atol=tol)
    spans = [16, 64, 200, 1000, 16, 64, 200, 1000]
    (s_ref,) = _onnx_body(span_op.make_node, feeds, spans=spans, sinks=8, scale=0.125, kv_heads=2)
    for dtype, tol in ((torch.float32, 2e-4), (torch.float16, 2e-2)):
        y = span_attention(*(_t(a, dtype) for a in feeds), spans=spans, sinks=8, scale=0.125)
        np.testing.assert_allclose(_np(y), s_ref, rtol=tol, atol=tol)


@pytest.mark.gpu
@pytest.mark.parametrize("seq", [4096, 16384])
def test_window_kernel_beats_dense_sdpa(seq):
    """Issue 7 targets >= 5x at N=16k, w=N/8 on H100; the pair-count bound there is 4.27x, so this
    asserts a real win (> 2x at 16k) and leaves the figures to ``python benchmarks/bench_triton.py``."""
    if not CUDA:
        pytest.skip("needs a CUDA GPU to time compiled kernels")
    import json

    import bench_scripts

    rc, out, err = bench_scripts.run("bench_triton.py", "--seq", seq, "--heads", 16, "--dim", 64,
                                     "--window", seq // 8, "--repeat", 10, "--json")
    assert rc == 0, err[-3000:]
    (result,) = [json.loads(line) for line in out.splitlines()]
    assert result["window"] == seq // 8 and result["speedup"] > (2.0 if seq >= 16384 else 1.0), result


# A stand-in for ``tensorrt`` / ``tensorrt.plugin`` (not installable here): symbolic dims
# are strings, decorators record the functions, so ``trt_plugins.register`` and the AOT
# glue run for real up to the point TensorRT would take the PTX.
_FAKE_TRT_SCRIPT = textwrap.dedent("""
    import json, re, sys, types

    class Expr:
        def __init__(self, v): self.v = v
        is_fake = False
        @property
        def is_constant(self): return isinstance(self.v, int)
        def constant_value(self): return self.v
        def __mul__(self, o): return Expr(f"({self.v}*{getattr(o, 'v', o)})")
        def __floordiv__(self, o): return Expr(f"({self.v}//{getattr(o, 'v', o)})")
        def __repr__(self): return str(self.v)

    class Desc:
        def __init__(self, *dims, dtype="f16"): self.shape_expr, self.dtype = [Expr(d) for d in dims], dtype

    class Launch: pass

    trt = types.ModuleType("tensorrt"); trt.float16, trt.bfloat16, trt.float32 = "f16", "bf16", "f32"
    trtp = types.ModuleType("tensorrt.plugin"); trt.plugin = trtp
    table = {"register": {}, "impl": {}, "autotune": {}, "aot_impl": {}}
    for kind in table:
        setattr(trtp, kind, lambda pid, kind=kind: (lambda fn: table[kind].setdefault(pid, fn)))
    trtp.TensorDesc = trtp.Tensor = Desc
    trtp.KernelLaunchParams, trtp.SymExprs = Launch, list
    trtp.SymInt32 = lambda e: e
    trtp.SymIntExprs = types.SimpleNamespace(from_tuple=list)
    trtp.cdiv = lambda a, b: f"cdiv({a},{b})"
    trtp.AutoTuneCombination = lambda types, layouts, tactics: [types, layouts, list(tactics)]
    trtp.from_shape_expr = lambda shape, dtype: [str(d) for d in shape]
    sys.modules["tensorrt"], sys.modules["tensorrt.plugin"] = trt, trtp

    from genzip.plugins import triton_trt, trt_plugins
    triton_trt.build_capability = lambda: 90
    calls = []
    triton_trt.run_window = lambda *a, **kw: calls.append(kw)
    ids = trt_plugins.register()
    assert trt_plugins.register() == ids
    q, k, v = Desc("B", 8, "N", 64), Desc("B", 2, "N", 64), Desc("B", 2, "N", 64)
    out = {"ids": ids, "kinds": {kind: sorted(t) for kind, t in table.items()},
           "tune": table["autotune"]["genzip::WindowAttentionResidual"](q, k, v, None),
           "tune_unknown_dim": table["autotune"]["genzip::SpanAttention"](q, k, Desc("B", 2, "N", "Dv"), None),
           "shapes": table["register"]["genzip::WindowAttentionResidual"](q, k, v, 7, 16, 0.125)}
    table["impl"]["genzip::WindowAttentionResidual"](q, k, v, 7, 16, 0.125, ("y", "r"), 0, 3)
    out["jit_call"] = calls
    def describe(name, ptx, launch=None, extra=()):
        name, ptx = (x.decode() if isinstance(x, bytes) else x for x in (name, ptx))
        entry = re.search(r"\\.entry (\\w+)\\((.*?)\\)", ptx, flags=re.S)
        return {"name": name, "entry": entry.group(1), "params": entry.group(2).count(".param"),
                "target": re.search(r"\\.target (\\w+)", ptx).group(1),
                "version": re.search(r"\\.version ([\\d.]+)", ptx).group(1),
                "grid": launch and [launch.grid_x, str(launch.grid_y)], "block": launch and launch.block_x,
                "shared": launch and launch.shared_mem, "extra": [str(e) for e in extra]}

    kernels = {}
    for pid, attrs, dtype, tactic in (("genzip::WindowAttention", (7, 16, 0.125), "f16", 2),
                                      ("genzip::WindowAttentionResidual", (7, 16, 0.125), "bf16", 0),
                                      ("genzip::SpanAttention", ([4, 4, 9, 9, 100, 100, 3, 3], 2, 0.125), "f16", 1)):
        q.dtype = dtype
        kernels[pid] = describe(*table["aot_impl"][pid](q, k, v, *attrs, None, tactic))
    from genzip.plugins.triton_span import span_ptx
    from genzip.plugins.triton_window import window_ptx
    other = span_ptx("float16", 64, 64, spans=[4, 4, 9, 9, 100, 100, 3, 4], sinks=2, scale=0.125, capability=90)
    kernels["span_other_spans"] = describe(other.name, other.ptx)
    sm80 = window_ptx("float32", 32, 32, scale=0.2, residual=False, capability=80)
    kernels["window_fp32_sm80"] = describe(sm80.name, sm80.ptx)
    out["kernels"] = kernels
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def stand_in_trt():
    """Output of ``_FAKE_TRT_SCRIPT``, run without the interpreter (it compiles real PTX)."""
    import json

    ptxas = os.path.join(os.path.dirname(importlib.util.find_spec("triton").origin), "backends", "nvidia", "bin")
    if not os.path.isdir(ptxas):
        pytest.skip(f"this triton wheel has no NVIDIA backend tools ({ptxas} missing)")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compile real PTX
    proc = subprocess.run([sys.executable, "-c", _FAKE_TRT_SCRIPT], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_trt_plugin_registration_and_aot_launch_parameters(stand_in_trt):
    out = stand_in_trt
    ids = ["genzip::WindowAttention", "genzip::WindowAttentionResidual", "genzip::SpanAttention"]
    assert out["ids"] == ids and all(out["kinds"][kind] == sorted(ids) for kind in out["kinds"])
    # Per type, the tile configurations are tactics TensorRT times; fp32 has one.
    assert out["tune"] == [["FP16|BF16, " * 4 + "FP16|BF16", "LINEAR", [1, 2, 3]],
                           ["FP32, " * 4 + "FP32", "LINEAR", [1]]]
    assert [c[2] for c in out["tune_unknown_dim"]] == [[1], [1]]
    assert out["shapes"] == [["B", "8", "N", "64"]] * 2
    assert out["jit_call"] == [{"window": 7, "scale": 0.125, "residual": True, "tactic": 3}]
    kernels = out["kernels"]
    res, span = kernels["genzip::WindowAttentionResidual"], kernels["genzip::SpanAttention"]
    assert res["grid"] == ["cdiv(N,128)", "(B*8)"] and res["block"] == 128 and res["shared"] > 0
    assert kernels["genzip::WindowAttention"]["grid"][0] == "cdiv(N,64)"  # tactic 2: 64-row tiles
    assert res["extra"] == ["N", "7", "8", "(8//2)"]  # n, window, Hq, group
    assert span["extra"] == ["N", "2", "8", "(8//2)"]  # n, sinks, Hq, group


def test_kernels_compile_to_ptx_for_tensorrt_aot_without_a_gpu(stand_in_trt):
    kernels = stand_in_trt["kernels"]
    # TensorRT passes Q, K, V, the 4 int32 scalars, then the outputs, and nothing else.
    assert [kernels[k]["params"] for k in ("genzip::WindowAttention", "genzip::WindowAttentionResidual",
                                           "genzip::SpanAttention")] == [8, 9, 8]
    assert {k["target"] for k in kernels.values()} == {"sm_90a", "sm_80"}
    assert all(k["version"] == "8.0" and k["entry"] == k["name"] for k in kernels.values())
    # TensorRT keys AOT kernels by name: other spans, dtypes or scales must get other names.
    assert len({k["name"] for k in kernels.values()}) == len(kernels)
