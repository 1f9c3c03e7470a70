"""Glue between genzip's Triton kernels and TensorRT's Python plugin API (``tensorrt.plugin``).

Two forms per plugin (see ``trt_plugins``):

* JIT (``@trtp.impl``): at run time TensorRT calls back into Python, which wraps the
  plugin's buffers as torch tensors and launches the Triton kernel on TensorRT's
  stream (``run_window`` / ``run_span``). Engines need Python, torch and triton.
* AOT (``@trtp.aot_impl``, TensorRT >= 10.8): at build time the kernel is compiled to
  PTX for the build GPU and handed over with its launch parameters (``aot_window`` /
  ``aot_span``); the engine then runs in any TensorRT runtime, trtexec included.

Tactics: ``autotune`` offers each dtype's tile configurations
(``triton_common.tactic_configs``) as tactics, so TensorRT times them at build and
both forms run the winner; tactic 0 (TensorRT's default) is tactic 1.

Invariant: the AOT launch mirrors the Python launcher exactly: grid
(cdiv(N, BLOCK_M), B·Hq), ``num_warps·32`` threads, Triton's shared-memory size, and
the int32 scalars in the kernels' ``SCALAR_ARGS`` order between input and output
pointers. Head dims must be build-time constants (they are constexprs of the kernel).
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

# A window wider than this is the same as N-wide for any realistic N, and keeps the
# kernel's int32 band bounds from overflowing.
_MAX_WINDOW = 1 << 30


def _torch_dtype_name(trt_dtype) -> str:
    import tensorrt as trt

    names = {trt.float16: "float16", trt.bfloat16: "bfloat16", trt.float32: "float32"}
    if trt_dtype not in names:
        raise ValueError(f"genzip attention plugins take fp16, bf16 or fp32, got {trt_dtype}")
    return names[trt_dtype]


def _constant_dim(desc, axis: int, what: str) -> int:
    dim = desc.shape_expr[axis]
    if dim.is_fake or not dim.is_constant:
        raise ValueError(f"the {what} must be a build-time constant for the AOT kernel; "
                         "rebuild with the JIT plugin (genzip-compile --plugin-form jit)")
    return int(dim.constant_value())


def build_capability() -> int:
    """Compute capability of the GPU TensorRT builds on, as Triton's int (e.g. 90)."""
    import torch

    major, minor = torch.cuda.get_device_capability()
    return major * 10 + minor


def _launch(trtp, kernel, q, k, scalars):
    launch = trtp.KernelLaunchParams()
    launch.grid_x = trtp.cdiv(q.shape_expr[2], kernel.block_m)
    launch.grid_y = q.shape_expr[0] * q.shape_expr[1]
    launch.block_x = kernel.threads
    launch.shared_mem = kernel.shared_mem
    extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(s) for s in scalars])
    return kernel.name.encode(), kernel.ptx.encode(), launch, extra


def aot_window(trtp, q, k, v, *, window: int, scale: float, residual: bool, tactic: int = 0):
    """``@trtp.aot_impl`` result for WindowAttention[Residual]: (name, PTX, launch params, int32 args)."""
    from genzip.plugins.triton_common import tactic_config
    from genzip.plugins.triton_window import window_ptx

    dtype = _torch_dtype_name(q.dtype)
    dk, dv = _constant_dim(q, 3, "head dim of Q"), _constant_dim(v, 3, "head dim of V")
    kernel = window_ptx(dtype, dk, dv, scale=scale, residual=residual, capability=build_capability(),
                        config=tactic_config(max(dk, dv), dtype, tactic))
    hq, hkv = q.shape_expr[1], k.shape_expr[1]
    return _launch(trtp, kernel, q, k, (q.shape_expr[2], min(int(window), _MAX_WINDOW), hq, hq // hkv))


def aot_span(trtp, q, k, v, *, spans, sinks: int, scale: float, tactic: int = 0):
    """``@trtp.aot_impl`` result for SpanAttention: (name, PTX, launch params, int32 args)."""
    from genzip.plugins.triton_common import tactic_config
    from genzip.plugins.triton_span import span_ptx

    dtype = _torch_dtype_name(q.dtype)
    dk, dv = _constant_dim(q, 3, "head dim of Q"), _constant_dim(v, 3, "head dim of V")
    kernel = span_ptx(dtype, dk, dv, spans=[int(s) for s in spans], sinks=int(sinks), scale=scale,
                      capability=build_capability(), config=tactic_config(max(dk, dv), dtype, tactic))
    hq, hkv = q.shape_expr[1], k.shape_expr[1]
    return _launch(trtp, kernel, q, k, (q.shape_expr[2], int(sinks), hq, hq // hkv))


def autotune(trtp, q, v, n_io: int) -> list:
    """Type combinations (all I/O share fp32, fp16 or bf16) and, per type, the tile tactics TensorRT times."""
    from genzip.plugins.triton_common import tactic_configs

    dims = [q.shape_expr[3], v.shape_expr[3]]
    known = all(not d.is_fake and d.is_constant for d in dims)
    head = max(int(d.constant_value()) for d in dims) if known else None

    def combination(types: str, dtype: str):
        tactics = sorted(tactic_configs(head, dtype)) if head is not None else [1]
        return trtp.AutoTuneCombination(", ".join([types] * n_io), "LINEAR", tactics)

    return [combination("FP16|BF16", "float16"), combination("FP32", "float32")]


def _config(q, v, tactic: int):
    from genzip.plugins.triton_common import tactic_config

    return tactic_config(max(q.shape[3], v.shape[3]), str(q.dtype).removeprefix("torch."), tactic)


def _tensors(inputs, outputs):
    import torch

    return ([torch.as_tensor(t, device="cuda") for t in inputs],
            [torch.as_tensor(t, device="cuda") for t in outputs])


def run_window(inputs, outputs, stream: int, *, window: int, scale: float, residual: bool, tactic: int = 0) -> None:
    """``@trtp.impl`` body for WindowAttention[Residual]: the Triton kernel on TensorRT's stream."""
    import torch

    from genzip.plugins.triton_window import window_attention

    (q, k, v), outs = _tensors(inputs, outputs)
    with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
        window_attention(q, k, v, window=window, scale=scale, residual=residual, config=_config(q, v, tactic),
                         out=tuple(outs) if residual else outs[0])


def run_span(inputs, outputs, stream: int, *, spans, sinks: int, scale: float, tactic: int = 0) -> None:
    """``@trtp.impl`` body for SpanAttention: the Triton kernel on TensorRT's stream."""
    import torch

    from genzip.plugins.triton_span import span_attention

    (q, k, v), outs = _tensors(inputs, outputs)
    with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
        span_attention(q, k, v, spans=[int(s) for s in spans], sinks=int(sinks), scale=scale,
                       config=_config(q, v, tactic), out=outs[0])
