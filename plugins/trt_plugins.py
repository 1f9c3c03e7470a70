"""TensorRT Python plugins ("quickly deployable plugins", ``tensorrt.plugin``) for genzip ops.

Plugins, in namespace ``genzip`` (an ONNX node maps to one by op type + domain or
``plugin_namespace``; see ``backends.trt_build`` for the parser-prepared copy):

* ``genzip::WindowAttention(Q, K, V) -> Y`` {window: int, chunk: int, scale: float}
* ``genzip::WindowAttentionResidual(Q, K, V) -> Y, R`` (same attributes; R = full - Y)
* ``genzip::SpanAttention(Q, K, V) -> Y`` {spans: int32[Hq], sinks: int, scale: float}

Output shapes come from ``genzip.plugins.op_shapes`` (``window_attention_shapes``
and ``span_attention_shapes``: ``(q_shape, k_shape, v_shape, ...) -> list of output
shapes``, written over plain sequences so they work on ints and on TensorRT's
symbolic ``ShapeExpr`` dims alike). ``chunk`` only shapes the ONNX body; the kernels
ignore it.

Implementations (``triton_trt`` holds the glue):

* ``@trtp.impl`` (JIT, Python at run time): the Triton kernels of ``triton_window`` /
  ``triton_span`` on TensorRT's stream. Without ``triton`` installed it falls back to
  dense masked attention in PyTorch (``attend``: correct, O(N^2) memory), and logs so.
* ``@trtp.aot_impl`` (TensorRT with ``aot_impl``, 10.9+, and ``triton`` installed):
  the same kernels compiled to PTX at build time; a node with ``aot=1`` (the parser
  copy sets it when ``--plugin-form`` resolves to ``aot``, the default where possible) is baked into the engine
  and runs without Python.
* ``@trtp.autotune``: Q, K, V and the outputs share one of fp32, fp16, bf16; with triton,
  the kernel's tile configurations (``triton_common.tactic_configs``) are tactics that
  TensorRT times at build, for the JIT and the AOT form alike.

Invariant: importing this module never imports ``tensorrt``, ``torch`` or ``triton``;
``register()`` is idempotent and returns the plugin ids it registered.
"""

import logging

logger = logging.getLogger(__name__)

NAMESPACE = "genzip"
_registered: list = []


def window_mask(torch, n: int, window: int, device=None):
    """[1, N, N] bool: query i sees key j iff |i - j| <= window (WindowAttention's schema)."""
    i = torch.arange(n, device=device)[:, None]
    j = torch.arange(n, device=device)[None, :]
    return ((i - j).abs() <= window)[None]


def span_mask(torch, n: int, spans, sinks: int, device=None):
    """[Hq, N, N] bool: head h, query i sees key j iff j <= i and (j < sinks or i - j < spans[h])."""
    i = torch.arange(n, device=device)[None, :, None]
    j = torch.arange(n, device=device)[None, None, :]
    span = torch.as_tensor([int(s) for s in spans], device=device)[:, None, None]
    return (j <= i) & ((j < sinks) | (i - j < span))


def attend(q, k, v, scale: float, allowed):
    """Reference masked attention on torch tensors [B, H, N, D]; query head h uses KV head h // (Hq/Hkv)."""
    import torch.nn.functional as F

    if k.shape[1] != q.shape[1]:
        reps = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(reps, dim=1), v.repeat_interleave(reps, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale)


def _run(inputs, outputs, stream: int, scale: float, make_mask, residual: bool = False):
    """Dense masked attention in PyTorch: the fallback ``@trtp.impl`` body when triton is missing."""
    import torch

    q, k, v = (torch.as_tensor(t, device="cuda") for t in inputs)
    with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
        y = attend(q, k, v, scale, make_mask(torch, q.shape[2], q.device))
        torch.as_tensor(outputs[0], device="cuda").copy_(y)
        if residual:
            full = attend(q, k, v, scale, None)
            torch.as_tensor(outputs[1], device="cuda").copy_(full - y)


def triton_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("triton") is not None


def _desc(trtp, q, k, v, shapes_fn, **kwargs):
    """Output descriptors from an op_shapes rule applied to TensorRT's symbolic input shapes."""
    dims = [[q.shape_expr[i] for i in range(len(q.shape_expr))],
            [k.shape_expr[i] for i in range(len(k.shape_expr))],
            [v.shape_expr[i] for i in range(len(v.shape_expr))]]
    return tuple(trtp.from_shape_expr(tuple(shape), dtype=q.dtype) for shape in shapes_fn(*dims, **kwargs))


def register() -> list:
    """Register genzip's plugins with TensorRT's plugin registry (needs ``tensorrt`` >= 10.6)."""
    if _registered:
        return list(_registered)

    import numpy as np
    import numpy.typing as npt
    import tensorrt.plugin as trtp

    from genzip.plugins import op_shapes, triton_trt

    use_triton = triton_available()
    if not use_triton:
        logger.warning("triton is not installed: genzip's TensorRT plugins fall back to dense PyTorch "
                       "attention (O(N^2) memory) and have no AOT form; pip install 'genzip[gpu]'")

    @trtp.register("genzip::WindowAttention")
    def window_desc(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc,
                    window: int, chunk: int, scale: float) -> trtp.TensorDesc:
        return _desc(trtp, q, k, v, op_shapes.window_attention_shapes, residual=False)[0]

    def run_window(inputs, outputs, stream, window, scale, residual, tactic):
        if use_triton:
            triton_trt.run_window(inputs, outputs, stream, window=window, scale=scale, residual=residual,
                                  tactic=tactic)
        else:
            _run(inputs, outputs, stream, scale, lambda t, n, d: window_mask(t, n, window, d), residual)

    @trtp.impl("genzip::WindowAttention")
    def window_impl(q: trtp.Tensor, k: trtp.Tensor, v: trtp.Tensor, window: int, chunk: int, scale: float,
                    outputs: tuple[trtp.Tensor], stream: int, tactic: int) -> None:
        run_window((q, k, v), outputs, stream, window, scale, False, tactic)

    @trtp.register("genzip::WindowAttentionResidual")
    def window_res_desc(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc,
                        window: int, chunk: int, scale: float) -> tuple[trtp.TensorDesc, trtp.TensorDesc]:
        return _desc(trtp, q, k, v, op_shapes.window_attention_shapes, residual=True)

    @trtp.impl("genzip::WindowAttentionResidual")
    def window_res_impl(q: trtp.Tensor, k: trtp.Tensor, v: trtp.Tensor, window: int, chunk: int, scale: float,
                        outputs: tuple[trtp.Tensor], stream: int, tactic: int) -> None:
        run_window((q, k, v), outputs, stream, window, scale, True, tactic)

    # ONNX ``ints`` attributes reach plugins as int32 arrays (onnx-tensorrt's plugin importer);
    # a GPU run must confirm this before SpanAttention engines are trusted.
    @trtp.register("genzip::SpanAttention")
    def span_desc(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc,
                  spans: npt.NDArray[np.int32], sinks: int, scale: float) -> trtp.TensorDesc:
        return _desc(trtp, q, k, v, op_shapes.span_attention_shapes, spans=[int(s) for s in spans])[0]

    @trtp.impl("genzip::SpanAttention")
    def span_impl(q: trtp.Tensor, k: trtp.Tensor, v: trtp.Tensor, spans: npt.NDArray[np.int32], sinks: int,
                  scale: float, outputs: tuple[trtp.Tensor], stream: int, tactic: int) -> None:
        if use_triton:
            triton_trt.run_span((q, k, v), outputs, stream, spans=spans, sinks=sinks, scale=scale, tactic=tactic)
        else:
            _run((q, k, v), outputs, stream, scale, lambda t, n, d: span_mask(t, n, spans, sinks, d))

    ids = ["genzip::WindowAttention", "genzip::WindowAttentionResidual", "genzip::SpanAttention"]
    for plugin_id, n_outputs in zip(ids, (1, 2, 1)):
        _register_autotune(trtp, plugin_id, 3 + n_outputs, use_triton)
    if hasattr(trtp, "aot_impl") and use_triton:
        _register_aot(trtp, npt, np)
    else:
        logger.info("no AOT form for genzip plugins (needs tensorrt.plugin.aot_impl and triton); "
                    "engines need Python at run time")
    _registered.extend(ids)
    logger.info("registered TensorRT plugins %s", ", ".join(ids))
    return list(ids)


def _register_autotune(trtp, plugin_id: str, n_io: int, use_triton: bool) -> None:
    """All I/O of one plugin instance share one of fp32, fp16, bf16 (the kernels' dtypes); with
    triton, each type also lists the kernel's tile configurations as tactics for TensorRT to time."""
    from genzip.plugins import triton_trt

    @trtp.autotune(plugin_id)
    def tune(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, outputs):
        if use_triton:
            return triton_trt.autotune(trtp, q, v, n_io)
        return [trtp.AutoTuneCombination(", ".join(["FP32|FP16|BF16"] * n_io))]


def _register_aot(trtp, npt, np) -> None:
    """Triton kernels compiled to PTX at build time, baked into the engine (runs without Python)."""

    from genzip.plugins import triton_trt

    result = tuple[str | bytes, str | bytes, trtp.KernelLaunchParams, trtp.SymExprs]

    @trtp.aot_impl("genzip::WindowAttention")
    def window_aot(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, window: int, chunk: int,
                   scale: float, outputs: tuple[trtp.TensorDesc], tactic: int) -> result:
        return triton_trt.aot_window(trtp, q, k, v, window=window, scale=scale, residual=False, tactic=tactic)

    @trtp.aot_impl("genzip::WindowAttentionResidual")
    def window_res_aot(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, window: int, chunk: int,
                       scale: float, outputs: tuple[trtp.TensorDesc], tactic: int) -> result:
        return triton_trt.aot_window(trtp, q, k, v, window=window, scale=scale, residual=True, tactic=tactic)

    @trtp.aot_impl("genzip::SpanAttention")
    def span_aot(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, spans: npt.NDArray[np.int32],
                 sinks: int, scale: float, outputs: tuple[trtp.TensorDesc], tactic: int) -> result:
        return triton_trt.aot_span(trtp, q, k, v, spans=spans, sinks=sinks, scale=scale, tactic=tactic)
