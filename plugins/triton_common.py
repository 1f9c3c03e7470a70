"""Pieces shared by genzip's Triton attention kernels (``triton_window``, ``triton_span``).

Invariant: every kernel here reads Q [B, Hq, N, Dk], K [B, Hkv, N, Dk], V [B, Hkv, N, Dv]
and writes Y [B, Hq, N, Dv], all contiguous, in one dtype (fp16, bf16 or fp32); query
head h reads KV head h // G with G = Hq / Hkv (no K/V copy per query head). A kernel's
parameters are ordered inputs, int32 scalars, outputs, with everything else a
``tl.constexpr``: that is the order TensorRT's AOT plugins pass arguments in, so the
same kernel serves the Python launcher and the AOT PTX (``compile_ptx``).

Softmax runs online (flash-attention style) in base 2 with a finite mask value:
a masked score is ``MASKED`` rather than -inf, so a query row with no visible key in
the blocks seen so far carries junk weights instead of NaN, and the junk is scaled
away (``exp2(MASKED - m) == 0``) by the first real score. Every valid row of every
genzip op sees at least itself, so every stored row has had a real score.

Importing this module imports ``triton``; set ``TRITON_INTERPRET=1`` before the first
import to run the kernels on CPU tensors through Triton's interpreter.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re

import triton
import triton.language as tl

LOG2E = 1.4426950408889634
MASKED = tl.constexpr(-1.0e30)  # constexpr: a plain float global is not readable from @triton.jit code


def ptx_isa(capability: int) -> int:
    """PTX ISA version for AOT kernels: as old as the target allows, so any recent driver JITs it.

    8.0 (CUDA 12.0) covers sm_80..sm_90a, 8.7 (CUDA 12.8) sm_100/sm_120. Triton's default
    follows its bundled ptxas (9.x), which TensorRT's QDP PTX loader is reported to reject
    above 9.0 (torch-tensorrt's Triton AOT path rewrites the header for that reason).
    """
    return 80 if capability < 100 else 87


TORCH_TO_TRITON = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}


@triton.jit
def load_rows(base, rows, n, HEAD_D: tl.constexpr, BLOCK_D: tl.constexpr):
    """A [len(rows), BLOCK_D] tile of a contiguous [N, HEAD_D] matrix; rows >= n and cols >= HEAD_D read 0."""
    cols = tl.arange(0, BLOCK_D)
    ptrs = base + rows[:, None] * HEAD_D + cols[None, :]
    return tl.load(ptrs, mask=(rows[:, None] < n) & (cols[None, :] < HEAD_D), other=0.0)


@triton.jit
def store_rows(base, rows, n, tile, HEAD_D: tl.constexpr, BLOCK_D: tl.constexpr):
    cols = tl.arange(0, BLOCK_D)
    ptrs = base + rows[:, None] * HEAD_D + cols[None, :]
    tl.store(ptrs, tile.to(base.dtype.element_ty), mask=(rows[:, None] < n) & (cols[None, :] < HEAD_D))


@triton.jit
def scores(q, k, scale_log2, IEEE: tl.constexpr):
    """q·kᵀ scaled into base-2 logits, fp32 [BLOCK_M, BLOCK_N]."""
    if IEEE:
        qk = tl.dot(q, tl.trans(k), input_precision="ieee")
    else:
        qk = tl.dot(q, tl.trans(k))
    return qk * scale_log2


@triton.jit
def online_update(acc, m_i, l_i, qk, allowed, v, IEEE: tl.constexpr, MASK: tl.constexpr = True):
    """Fold one key block (base-2 logits ``qk``, bool ``allowed``, values ``v``) into the running softmax.

    ``MASK=False`` skips the mask for blocks every row sees whole (the band's interior).
    """
    if MASK:
        qk = tl.where(allowed, qk, MASKED)
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    alpha = tl.math.exp2(m_i - m_new)
    p = tl.math.exp2(qk - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    if IEEE:
        pv = tl.dot(p.to(v.dtype), v, input_precision="ieee")
    else:
        pv = tl.dot(p.to(v.dtype), v)
    return acc * alpha[:, None] + pv, m_new, l_i


@triton.jit
def head_offsets(n, hq, group, HEAD_DK: tl.constexpr, HEAD_DV: tl.constexpr):
    """int64 element offsets of this program's (batch, query head) slice of Q and of Y,
    and of its KV head's slice of K and of V, plus the query head index."""
    bh = tl.program_id(1)
    b = bh // hq
    h = bh % hq
    kv = (b * (hq // group) + h // group).to(tl.int64)
    bh64 = bh.to(tl.int64)
    # ``n`` is not cast itself: Triton's launcher turns an int argument equal to 1 into a constexpr.
    return bh64 * n * HEAD_DK, kv * n * HEAD_DK, kv * n * HEAD_DV, bh64 * n * HEAD_DV, h


@triton.jit
def interior(lo, band_end, first, end, BLOCK_N: tl.constexpr):
    """The BLOCK_N-aligned key blocks inside [first, end) (keys every query row of the program may see),
    as a sub-range [inner_lo, inner_hi) of the band's blocks [lo, band_end); empty when none fits."""
    inner_lo = tl.cdiv(tl.maximum(first, 0), BLOCK_N) * BLOCK_N
    inner_lo = tl.minimum(tl.maximum(inner_lo, lo), band_end)
    inner_hi = tl.maximum(end, 0) // BLOCK_N * BLOCK_N
    return inner_lo, tl.minimum(tl.maximum(inner_hi, inner_lo), band_end)


@dataclasses.dataclass(frozen=True)
class BlockConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


def block_config(head_dim: int, dtype: str, interpret: bool = False) -> BlockConfig:
    """Tile sizes: Triton's flash-attention tutorial defaults for Hopper/Ampere, tiny under the interpreter.

    Not tuned on a GPU in this tree (none was available); ``benchmarks/bench_triton.py`` times them.
    """
    if interpret:
        return BlockConfig(16, 16, 1, 1)
    if dtype == "float32" or head_dim > 128:
        return BlockConfig(64, 32, 4, 2)
    return BlockConfig(128, 64, 8 if head_dim > 64 else 4, 3)


def tactic_configs(head_dim: int, dtype: str) -> dict[int, BlockConfig]:
    """Tile choices a TensorRT plugin offers as tactics (ids >= 1), timed by TensorRT at build.

    Tactic 1 is ``block_config``'s default; 16-bit inputs add a 64-row tile (more
    programs for short N or few heads) and, for head dims <= 64, a 128x128 tile with
    2 stages (the largest that keeps K/V tiles well inside Hopper's shared memory).
    """
    configs = {1: block_config(head_dim, dtype)}
    if dtype != "float32" and head_dim <= 128:
        configs[2] = BlockConfig(64, 64, 4, 3)
        if head_dim <= 64:
            configs[3] = BlockConfig(128, 128, 8, 2)
    return configs


def tactic_config(head_dim: int, dtype: str, tactic: int) -> BlockConfig:
    """The config of ``tactic``; 0 (TensorRT's default tactic) and unknown ids get tactic 1."""
    configs = tactic_configs(head_dim, dtype)
    return configs.get(tactic, configs[1])


def pow2(n: int) -> int:
    return max(16, 1 << (int(n) - 1).bit_length())


def is_interpreted(kernel) -> bool:
    """Whether ``kernel`` was decorated under ``TRITON_INTERPRET=1`` (it then runs on CPU tensors)."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(kernel, InterpretedFunction)


@dataclasses.dataclass(frozen=True)
class PtxKernel:
    """What a TensorRT AOT plugin needs: entry name, PTX text, threads per block, dynamic shared memory."""
    name: str
    ptx: str
    threads: int
    shared_mem: int
    block_m: int


def compile_ptx(fn, signature: dict, constexprs: dict, n_params: int, capability: int,
                config: BlockConfig) -> PtxKernel:
    """Compile ``fn`` for ``sm_{capability}`` (no GPU needed) and keep only the ``n_params`` launch parameters.

    Triton appends its own pointer parameters (global and profile scratch) after the
    user's; TensorRT passes exactly inputs + scalars + outputs, so those are dropped
    from the ``.entry`` declaration, which is sound only while the body never reads
    them (checked: a kernel that needs scratch memory raises instead).
    """
    from triton.backends.compiler import GPUTarget

    # TensorRT hands plugins 256-byte aligned I/O buffers; promising 16 lets Triton vectorize loads
    # (its JIT launcher checks this per call, an AOT kernel cannot).
    pointer_attrs = {(i,): [["tt.divisibility", 16]] for i, kind in enumerate(signature.values())
                     if kind.startswith("*")}
    source = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=pointer_attrs)
    options = {"num_warps": config.num_warps, "num_stages": config.num_stages,
               "ptx_version": ptx_isa(capability)}
    compiled = triton.compile(source, target=GPUTarget("cuda", capability, 32), options=options)
    meta = compiled.metadata
    if getattr(meta, "global_scratch_size", 0) or getattr(meta, "profile_scratch_size", 0):
        raise ValueError(f"{meta.name} needs Triton scratch memory, which TensorRT's AOT launch cannot provide")
    ptx = _drop_trailing_params(compiled.asm["ptx"], meta.name, n_params)
    # TensorRT keys AOT kernels by entry name; kernels compiled with different
    # constexprs (scale, spans, dtype) must not share one.
    name = f"{meta.name}_{hashlib.sha1(ptx.encode()).hexdigest()[:12]}"
    ptx = ptx.replace(meta.name, name)
    return PtxKernel(name, ptx, meta.num_warps * 32, meta.shared, config.block_m)


def _drop_trailing_params(ptx: str, name: str, keep: int) -> str:
    head = re.search(rf"\.entry {re.escape(name)}\((.*?)\)", ptx, flags=re.S)
    if head is None:
        raise ValueError(f"entry {name} not found in the PTX Triton produced")
    params = [p.strip() for p in head.group(1).split(",") if p.strip()]
    if len(params) < keep:
        raise ValueError(f"{name} has {len(params)} PTX parameters, fewer than the {keep} TensorRT passes")
    for i in range(keep, len(params)):
        if re.search(rf"\[{re.escape(name)}_param_{i}\]", ptx):
            raise ValueError(f"{name} reads Triton's internal parameter {i} (scratch memory); "
                             "TensorRT's AOT launch cannot provide it")
    body = ",\n\t".join(params[:keep])
    return ptx[:head.start(1)] + "\n\t" + body + "\n" + ptx[head.end(1):]
