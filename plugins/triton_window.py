"""Triton kernel for ``genzip.WindowAttention``: blocked sliding-window attention, optionally with its residual.

Semantics (the ONNX op's, see ``window_attention``): query i attends key j iff
``|i - j| <= window``; Y is [B, Hq, N, Dv]; with ``residual`` a second output
R = full - Y, where full is unrestricted attention over all N keys.

Invariant: a program owns BLOCK_M queries of one (batch, query head) and visits only
the key blocks overlapping ``[start_m - window, start_m + BLOCK_M - 1 + window]``, so
the work is O(N·(2·window + BLOCK_M + BLOCK_N)) per head, never O(N²). With
``residual`` the same program also visits every other key block, keeping a second
online softmax over all keys; the in-band blocks feed both softmaxes from one
``q·kᵀ``. That pass is O(N²) by definition: WA-RS only asks for R on its "full"
steps, and the window steps run the kernel without it.
"""

from __future__ import annotations

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
SCALAR_ARGS = ("n", "window", "hq", "group")


@triton.jit
def _visit(q, k_base, v_base, start_n, rows, n, window, acc, m_i, l_i, acc_f, m_f, l_f,
           SCALE_LOG2: tl.constexpr, HEAD_DK: tl.constexpr, HEAD_DV: tl.constexpr, BLOCK_DK: tl.constexpr,
           BLOCK_DV: tl.constexpr, BLOCK_N: tl.constexpr, IN_BAND: tl.constexpr, EDGE: tl.constexpr,
           RESIDUAL: tl.constexpr, IEEE: tl.constexpr):
    """One key block: into the window softmax when ``IN_BAND``, into the full one with ``RESIDUAL``.
    ``EDGE=False`` promises every row sees the whole block (no mask needed)."""
    cols = start_n + tl.arange(0, BLOCK_N)
    v = load_rows(v_base, cols, n, HEAD_DV, BLOCK_DV)
    qk = scores(q, load_rows(k_base, cols, n, HEAD_DK, BLOCK_DK), SCALE_LOG2, IEEE)
    in_range = cols[None, :] < n
    if IN_BAND:
        d = rows[:, None] - cols[None, :]
        band = (d <= window) & (d >= -window) & in_range
        acc, m_i, l_i = online_update(acc, m_i, l_i, qk, band, v, IEEE, EDGE)
    if RESIDUAL:
        acc_f, m_f, l_f = online_update(acc_f, m_f, l_f, qk, in_range, v, IEEE, EDGE)
    return acc, m_i, l_i, acc_f, m_f, l_f


@triton.jit
def window_kernel(Q, K, V, n, window, hq, group, Y, R,
                  SCALE_LOG2: tl.constexpr, HEAD_DK: tl.constexpr, HEAD_DV: tl.constexpr,
                  BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_M: tl.constexpr,
                  BLOCK_N: tl.constexpr, RESIDUAL: tl.constexpr, IEEE: tl.constexpr):
    q_off, k_off, v_off, y_off, h = head_offsets(n, hq, group, HEAD_DK, HEAD_DV)
    k_base, v_base = K + k_off, V + v_off
    start_m = tl.program_id(0) * BLOCK_M
    rows = start_m + tl.arange(0, BLOCK_M)
    q = load_rows(Q + q_off, rows, n, HEAD_DK, BLOCK_DK)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], MASKED, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc_f = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    m_f = tl.full([BLOCK_M], MASKED, dtype=tl.float32)
    l_f = tl.zeros([BLOCK_M], dtype=tl.float32)
    lo = tl.maximum(start_m - window, 0) // BLOCK_N * BLOCK_N
    hi = tl.minimum(start_m + BLOCK_M + window, n)
    band_end = lo + tl.cdiv(hi - lo, BLOCK_N) * BLOCK_N
    # Keys [start_m + BLOCK_M - 1 - window, start_m + window] are in every row's window.
    inner_lo, inner_hi = interior(lo, band_end, start_m + BLOCK_M - 1 - window,
                                  tl.minimum(start_m + window + 1, n), BLOCK_N)
    # The 5 loops differ only in (IN_BAND, EDGE, RESIDUAL); everything else is passed through.
    if RESIDUAL:
        for start_n in range(0, lo, BLOCK_N):  # left of the band: full softmax only
            acc, m_i, l_i, acc_f, m_f, l_f = _visit(
                q, k_base, v_base, start_n, rows, n, window, acc, m_i, l_i, acc_f, m_f, l_f, SCALE_LOG2,
                HEAD_DK, HEAD_DV, BLOCK_DK, BLOCK_DV, BLOCK_N, False, False, True, IEEE)
    for start_n in range(lo, inner_lo, BLOCK_N):
        acc, m_i, l_i, acc_f, m_f, l_f = _visit(
            q, k_base, v_base, start_n, rows, n, window, acc, m_i, l_i, acc_f, m_f, l_f, SCALE_LOG2,
            HEAD_DK, HEAD_DV, BLOCK_DK, BLOCK_DV, BLOCK_N, True, True, RESIDUAL, IEEE)
    for start_n in range(inner_lo, inner_hi, BLOCK_N):
        acc, m_i, l_i, acc_f, m_f, l_f = _visit(
            q, k_base, v_base, start_n, rows, n, window, acc, m_i, l_i, acc_f, m_f, l_f, SCALE_LOG2,
            HEAD_DK, HEAD_DV, BLOCK_DK, BLOCK_DV, BLOCK_N, True, False, RESIDUAL, IEEE)
    for start_n in range(inner_hi, hi, BLOCK_N):
        acc, m_i, l_i, acc_f, m_f, l_f = _visit(
            q, k_base, v_base, start_n, rows, n, window, acc, m_i, l_i, acc_f, m_f, l_f, SCALE_LOG2,
            HEAD_DK, HEAD_DV, BLOCK_DK, BLOCK_DV, BLOCK_N, True, True, RESIDUAL, IEEE)
    if RESIDUAL:
        for start_n in range(band_end, n, BLOCK_N):  # right of the band
            acc, m_i, l_i, acc_f, m_f, l_f = _visit(
                q, k_base, v_base, start_n, rows, n, window, acc, m_i, l_i, acc_f, m_f, l_f, SCALE_LOG2,
                HEAD_DK, HEAD_DV, BLOCK_DK, BLOCK_DV, BLOCK_N, False, True, True, IEEE)
    y = acc / l_i[:, None]
    store_rows(Y + y_off, rows, n, y, HEAD_DV, BLOCK_DV)
    if RESIDUAL:
        store_rows(R + y_off, rows, n, acc_f / l_f[:, None] - y, HEAD_DV, BLOCK_DV)


def _constexprs(dtype: str, head_dk: int, head_dv: int, scale: float, residual: bool, cfg: BlockConfig) -> dict:
    return {"SCALE_LOG2": float(scale) * LOG2E, "HEAD_DK": head_dk, "HEAD_DV": head_dv,
            "BLOCK_DK": pow2(head_dk), "BLOCK_DV": pow2(head_dv), "BLOCK_M": cfg.block_m,
            "BLOCK_N": cfg.block_n, "RESIDUAL": bool(residual), "IEEE": dtype == "float32"}


def window_attention(q, k, v, *, window: int, scale: float | None = None, residual: bool = False,
                     config: BlockConfig | None = None, out=None):
    """Run the kernel on torch tensors q [B,Hq,N,Dk], k [B,Hkv,N,Dk], v [B,Hkv,N,Dv]; returns Y or (Y, R).

    ``out`` (optional) is the output tensor, or the (Y, R) pair with ``residual``,
    written in place (what the TensorRT plugin passes).
    """
    import torch

    if window < 0:
        raise ValueError(f"window must be >= 0, got {window}")
    b, hq, n, dk = q.shape
    hkv, dv = k.shape[1], v.shape[3]
    if k.shape != (b, hkv, n, dk) or v.shape[:3] != (b, hkv, n) or hkv == 0 or hq % hkv:
        raise ValueError(f"bad shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if not q.dtype == k.dtype == v.dtype or str(q.dtype).removeprefix("torch.") not in TORCH_TO_TRITON:
        raise ValueError(f"q, k, v must share one of float16/bfloat16/float32, got {q.dtype}, {k.dtype}, {v.dtype}")
    dtype = str(q.dtype).removeprefix("torch.")
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    if out is None:
        y = torch.empty((b, hq, n, dv), dtype=q.dtype, device=q.device)
        r = torch.empty_like(y) if residual else None
    else:
        y, r = out if residual else (out, None)
    if n == 0 or b * hq == 0:
        return (y, r) if residual else y
    cfg = config or block_config(max(dk, dv), dtype, is_interpreted(window_kernel))
    scale = dk ** -0.5 if scale is None else scale
    grid = (triton.cdiv(n, cfg.block_m), b * hq)
    # A window beyond N changes nothing and could overflow int32 bounds in the kernel.
    window_kernel[grid](q, k, v, n, min(int(window), n), hq, hq // hkv, y, r,
                        **_constexprs(dtype, dk, dv, scale, residual, cfg),
                        num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return (y, r) if residual else y


def window_ptx(dtype: str, head_dk: int, head_dv: int, *, scale: float, residual: bool, capability: int,
               config: BlockConfig | None = None) -> PtxKernel:
    """The kernel as PTX for ``sm_{capability}`` with TensorRT's AOT parameter list.

    Parameters: Q, K, V, then int32 ``SCALAR_ARGS``, then Y (and R with ``residual``).
    Launch grid: (cdiv(N, kernel.block_m), B·Hq).
    """
    cfg = config or block_config(max(head_dk, head_dv), dtype)
    t = TORCH_TO_TRITON[dtype]
    constexprs = _constexprs(dtype, head_dk, head_dv, scale, residual, cfg)
    if not residual:
        constexprs["R"] = None
    signature = {"Q": f"*{t}", "K": f"*{t}", "V": f"*{t}", **{s: "i32" for s in SCALAR_ARGS}, "Y": f"*{t}",
                 "R": f"*{t}" if residual else "constexpr", **{c: "constexpr" for c in constexprs if c != "R"}}
    return compile_ptx(window_kernel, signature, constexprs, 3 + len(SCALAR_ARGS) + (2 if residual else 1),
                       capability, cfg)
