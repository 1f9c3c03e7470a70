"""Triton kernel for ``genzip.SpanAttention`` (MoA): causal attention over sinks plus a per-head span.

Semantics (the ONNX op's, see ``span_attention``): query i of head h attends key j
iff ``j <= i`` and (``j < sinks`` or ``i - j < spans[h]``); grouped-query heads read
KV head h // (Hq / Hkv) directly, never a per-query-head copy.

Invariant: a program owns BLOCK_M queries of one (batch, query head) and visits two
disjoint ranges of key blocks: the sink blocks below the band, then the blocks
overlapping ``[start_m - spans[h] + 1, start_m + BLOCK_M - 1]``; so the work is
O(N·(sinks + spans[h] + BLOCK_M + BLOCK_N)) per head. ``spans`` is a compile-time
tuple (TensorRT's AOT launch can pass int32 scalars but no extra buffer), so one
compiled kernel serves one spans vector; the head's span is picked with an unrolled
select at the start of the program.
"""

from __future__ import annotations

from collections.abc import Sequence

import triton
import triton.language as tl

from genzip.plugins.triton_common import (
    LOG2E,
    MASKED,
    TORCH_TO_TRITON,
    BlockConfig,
    PtxKernel,
    block_config,
    compile_ptx,
    head_offsets,
    interior,
    is_interpreted,
    load_rows,
    online_update,
    pow2,
    scores,
    store_rows,
)

# int32 scalars TensorRT's AOT launch passes between the input and output pointers.
SCALAR_ARGS = ("n", "sinks", "hq", "group")
_MAX_INT32 = 2**31 - 1


@triton.jit
def _visit(q, k_base, v_base, start_n, rows, n, sinks, span, acc, m_i, l_i,
           SCALE_LOG2: tl.constexpr, HEAD_DK: tl.constexpr, HEAD_DV: tl.constexpr, BLOCK_DK: tl.constexpr,
           BLOCK_DV: tl.constexpr, BLOCK_N: tl.constexpr, EDGE: tl.constexpr, IEEE: tl.constexpr):
    """One band key block; ``EDGE=False`` promises every row sees the whole block (no mask needed)."""
    cols = start_n + tl.arange(0, BLOCK_N)
    v = load_rows(v_base, cols, n, HEAD_DV, BLOCK_DV)
    qk = scores(q, load_rows(k_base, cols, n, HEAD_DK, BLOCK_DK), SCALE_LOG2, IEEE)
    d = rows[:, None] - cols[None, :]
    allowed = (d >= 0) & ((cols[None, :] < sinks) | (d < span)) & (cols[None, :] < n)
    return online_update(acc, m_i, l_i, qk, allowed, v, IEEE, EDGE)


@triton.jit
def span_kernel(Q, K, V, n, sinks, hq, group, Y,
                SPANS: tl.constexpr, SCALE_LOG2: tl.constexpr, HEAD_DK: tl.constexpr, HEAD_DV: tl.constexpr,
                BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, IEEE: tl.constexpr):
    q_off, k_off, v_off, y_off, h = head_offsets(n, hq, group, HEAD_DK, HEAD_DV)
    k_base, v_base = K + k_off, V + v_off
    span = h * 0
    for i in tl.static_range(len(SPANS)):
        span += tl.where(h == i, SPANS[i], 0)
    start_m = tl.program_id(0) * BLOCK_M
    rows = start_m + tl.arange(0, BLOCK_M)
    q = load_rows(Q + q_off, rows, n, HEAD_DK, BLOCK_DK)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], MASKED, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    lo = tl.maximum(start_m - span + 1, 0) // BLOCK_N * BLOCK_N
    hi = tl.minimum(start_m + BLOCK_M, n)
    sink_end = tl.minimum(tl.cdiv(sinks, BLOCK_N) * BLOCK_N, lo)
    for start_n in range(0, sink_end, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)
        v = load_rows(v_base, cols, n, HEAD_DV, BLOCK_DV)
        qk = scores(q, load_rows(k_base, cols, n, HEAD_DK, BLOCK_DK), SCALE_LOG2, IEEE)
        # Every key here is below the band (j < lo <= i - span + 1), so only sinks count.
        acc, m_i, l_i = online_update(acc, m_i, l_i, qk, cols[None, :] < sinks, v, IEEE)
    # Keys [start_m + BLOCK_M - span, start_m] are causal and in the span for every row.
    inner_lo, inner_hi = interior(lo, lo + tl.cdiv(hi - lo, BLOCK_N) * BLOCK_N, start_m + BLOCK_M - span,
                                  start_m + 1, BLOCK_N)
    for start_n in range(lo, inner_lo, BLOCK_N):
        acc, m_i, l_i = _visit(q, k_base, v_base, start_n, rows, n, sinks, span, acc, m_i, l_i, SCALE_LOG2,
                               HEAD_DK, HEAD_DV, BLOCK_DK, BLOCK_DV, BLOCK_N, True, IEEE)
    for start_n in range(inner_lo, inner_hi, BLOCK_N):
        acc, m_i, l_i = _visit(q, k_base, v_base, start_n, rows, n, sinks, span, acc, m_i, l_i, SCALE_LOG2,
                               HEAD_DK, HEAD_DV, BLOCK_DK, BLOCK_DV, BLOCK_N, False, IEEE)
    for start_n in range(inner_hi, hi, BLOCK_N):
        acc, m_i, l_i = _visit(q, k_base, v_base, start_n, rows, n, sinks, span, acc, m_i, l_i, SCALE_LOG2,
                               HEAD_DK, HEAD_DV, BLOCK_DK, BLOCK_DV, BLOCK_N, True, IEEE)
    store_rows(Y + y_off, rows, n, acc / l_i[:, None], HEAD_DV, BLOCK_DV)


def _check_spans(spans: Sequence[int], sinks: int, hq: int) -> tuple[int, ...]:
    spans = tuple(int(s) for s in spans)
    if len(spans) != hq:
        raise ValueError(f"{len(spans)} spans for {hq} query heads")
    if not spans or min(spans) < 1 or max(spans) > _MAX_INT32 or not 0 <= sinks <= _MAX_INT32:
        raise ValueError(f"spans must be in [1, 2**31) and sinks in [0, 2**31), got spans={spans} sinks={sinks}")
    return spans


def _constexprs(dtype: str, spans: tuple, head_dk: int, head_dv: int, scale: float, cfg: BlockConfig) -> dict:
    return {"SPANS": spans, "SCALE_LOG2": float(scale) * LOG2E, "HEAD_DK": head_dk, "HEAD_DV": head_dv,
            "BLOCK_DK": pow2(head_dk), "BLOCK_DV": pow2(head_dv), "BLOCK_M": cfg.block_m,
            "BLOCK_N": cfg.block_n, "IEEE": dtype == "float32"}


def span_attention(q, k, v, *, spans: Sequence[int], sinks: int, scale: float | None = None,
                   config: BlockConfig | None = None, out=None):
    """Run the kernel on torch tensors q [B,Hq,N,Dk], k [B,Hkv,N,Dk], v [B,Hkv,N,Dv]; returns Y.

    ``out`` (optional) is the output tensor to write in place (what the TensorRT plugin passes).
    """
    import torch

    b, hq, n, dk = q.shape
    hkv, dv = k.shape[1], v.shape[3]
    if k.shape != (b, hkv, n, dk) or v.shape[:3] != (b, hkv, n) or hkv == 0 or hq % hkv:
        raise ValueError(f"bad shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if not q.dtype == k.dtype == v.dtype or str(q.dtype).removeprefix("torch.") not in TORCH_TO_TRITON:
        raise ValueError(f"q, k, v must share one of float16/bfloat16/float32, got {q.dtype}, {k.dtype}, {v.dtype}")
    spans = _check_spans(spans, sinks, hq)
    dtype = str(q.dtype).removeprefix("torch.")
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    y = torch.empty((b, hq, n, dv), dtype=q.dtype, device=q.device) if out is None else out
    if n == 0 or b == 0:
        return y
    cfg = config or block_config(max(dk, dv), dtype, is_interpreted(span_kernel))
    scale = dk ** -0.5 if scale is None else scale
    grid = (triton.cdiv(n, cfg.block_m), b * hq)
    span_kernel[grid](q, k, v, n, int(sinks), hq, hq // hkv, y, **_constexprs(dtype, spans, dk, dv, scale, cfg),
                      num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return y


def span_ptx(dtype: str, head_dk: int, head_dv: int, *, spans: Sequence[int], sinks: int, scale: float,
             capability: int, config: BlockConfig | None = None) -> PtxKernel:
    """The kernel as PTX for ``sm_{capability}`` with TensorRT's AOT parameter list.

    Parameters: Q, K, V, then int32 ``SCALAR_ARGS``, then Y. Launch grid: (cdiv(N, kernel.block_m), B·Hq).
    """
    spans = _check_spans(spans, sinks, len(spans))
    cfg = config or block_config(max(head_dk, head_dv), dtype)
    t = TORCH_TO_TRITON[dtype]
    constexprs = _constexprs(dtype, spans, head_dk, head_dv, scale, cfg)
    signature = {"Q": f"*{t}", "K": f"*{t}", "V": f"*{t}", **{s: "i32" for s in SCALAR_ARGS}, "Y": f"*{t}",
                 **{c: "constexpr" for c in constexprs}}
    return compile_ptx(span_kernel, signature, constexprs, 3 + len(SCALAR_ARGS) + 1, capability, cfg)
