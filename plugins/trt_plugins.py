"""TensorRT Python plugins ("quickly deployable plugins", ``tensorrt.plugin``) for genzip ops.

Plugins, in namespace ``genzip`` (an ONNX node maps to one by op type + domain or
``plugin_namespace``; see ``backends.trt_build`` for the parser-prepared copy):

* ``genzip::WindowAttention(Q, K, V) -> Y`` {window: int, chunk: int, scale: float}
* ``genzip::WindowAttentionResidual(Q, K, V) -> Y, R`` (same attributes; R = full - Y)
* ``genzip::SpanAttention(Q, K, V) -> Y`` {spans: int32[Hq], sinks: int, scale: float}

Output shapes come from ``genzip.plugins.op_shapes`` (``window_attention_shapes``
and ``span_attention_shapes``: ``(q_shape, k_shape, v_shape, ...) -> list of output
shapes``, written over plain sequences so they work on ints and on TensorRT's
symbolic ``ShapeExpr`` dims alike). The ``@trtp.impl`` bodies compute the banded
attention with PyTorch on TensorRT's stream: correct for every shape, dense in
memory (O(N^2) scores), the reference the Triton kernels are checked against. An
``@trtp.aot_impl`` (engine without Python at run time) needs compiled kernels and
is registered only when ``genzip.plugins.trt_kernels`` provides them.

Invariant: importing this module never imports ``tensorrt`` or ``torch``;
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
    import torch

    q, k, v = (torch.as_tensor(t, device="cuda") for t in inputs)
    with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
        y = attend(q, k, v, scale, make_mask(torch, q.shape[2], q.device))
        torch.as_tensor(outputs[0], device="cuda").copy_(y)
        if residual:
            full = attend(q, k, v, scale, None)
            torch.as_tensor(outputs[1], device="cuda").copy_(full - y)


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
    from typing import Tuple

    import numpy as np
    import numpy.typing as npt
    import tensorrt.plugin as trtp

    from genzip.plugins import op_shapes

    @trtp.register("genzip::WindowAttention")
    def window_desc(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc,
                    window: int, chunk: int, scale: float) -> trtp.TensorDesc:
        return _desc(trtp, q, k, v, op_shapes.window_attention_shapes, residual=False)[0]

    @trtp.impl("genzip::WindowAttention")
    def window_impl(q: trtp.Tensor, k: trtp.Tensor, v: trtp.Tensor, window: int, chunk: int, scale: float,
                    outputs: Tuple[trtp.Tensor], stream: int) -> None:
        _run((q, k, v), outputs, stream, scale, lambda t, n, d: window_mask(t, n, window, d))

    @trtp.register("genzip::WindowAttentionResidual")
    def window_res_desc(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc,
                        window: int, chunk: int, scale: float) -> Tuple[trtp.TensorDesc, trtp.TensorDesc]:
        return _desc(trtp, q, k, v, op_shapes.window_attention_shapes, residual=True)

    @trtp.impl("genzip::WindowAttentionResidual")
    def window_res_impl(q: trtp.Tensor, k: trtp.Tensor, v: trtp.Tensor, window: int, chunk: int, scale: float,
                        outputs: Tuple[trtp.Tensor], stream: int) -> None:
        _run((q, k, v), outputs, stream, scale, lambda t, n, d: window_mask(t, n, window, d), residual=True)

    # ONNX ``ints`` attributes reach plugins as int32 arrays (onnx-tensorrt's plugin importer);
    # a GPU run must confirm this before SpanAttention engines are trusted.
    @trtp.register("genzip::SpanAttention")
    def span_desc(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc,
                  spans: npt.NDArray[np.int32], sinks: int, scale: float) -> trtp.TensorDesc:
        return _desc(trtp, q, k, v, op_shapes.span_attention_shapes, spans=[int(s) for s in spans])[0]

    @trtp.impl("genzip::SpanAttention")
    def span_impl(q: trtp.Tensor, k: trtp.Tensor, v: trtp.Tensor, spans: npt.NDArray[np.int32], sinks: int,
                  scale: float, outputs: Tuple[trtp.Tensor], stream: int) -> None:
        _run((q, k, v), outputs, stream, scale, lambda t, n, d: span_mask(t, n, spans, sinks, d))

    ids = ["genzip::WindowAttention", "genzip::WindowAttentionResidual", "genzip::SpanAttention"]
    _register_aot(trtp, ids)
    _registered.extend(ids)
    logger.info("registered TensorRT plugins %s", ", ".join(ids))
    return list(ids)


def _register_aot(trtp, ids: list) -> None:
    """Hand AOT implementations to TensorRT when compiled kernels exist (Triton; not in this tree yet)."""
    import importlib.util

    if not hasattr(trtp, "aot_impl") or importlib.util.find_spec("genzip.plugins.trt_kernels") is None:
        logger.debug("no AOT kernels for %s; engines need Python plugins at run time", ", ".join(ids))
        return
    from genzip.plugins import trt_kernels

    for plugin_id in ids:
        trt_kernels.register_aot(trtp, plugin_id)
