"""``python benchmarks/bench_triton.py``: genzip's Triton attention kernels vs dense SDPA on a GPU.

    python benchmarks/bench_triton.py --seq 4096 16384 [--op window|span] [--window 0.125] [--json]

prints one JSON object per sequence length (``--json`` is accepted for uniformity with
the other benchmarks; JSON lines are the only output). Needs CUDA and triton
(``pip install 'genzip[gpu]'``).

Invariant: the kernel and its dense counterpart (full SDPA for ``window``, causal
SDPA for ``span``, the backend PyTorch picks, i.e. flash attention on Hopper in fp16)
run on the same q, k, v in one process, interleaved iteration by iteration and timed
with CUDA events, so clock and load drift hit both alike; reported times are medians.
``flop_bound`` is the exact dense/sparse ratio of attended (query, key) pairs, the
speedup a kernel with equal per-pair cost would reach. Needs CUDA; exits 2 without it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import _common

from genzip.errors import GenzipError
from genzip.passes.attention import _flops as af


def _time_ms(torch, fn) -> float:
    """One call of ``fn`` timed with CUDA events."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end)


def run_benchmark(*, seq: int, heads: int = 16, dim: int = 64, window: int | None = None, op: str = "window",
                  batch: int = 1, dtype: str = "float16", repeat: int = 20, warmup: int = 3, seed: int = 0) -> dict:
    """Time one op's Triton kernel against dense SDPA; return the figures as a dict."""
    import torch
    import torch.nn.functional as F

    if not torch.cuda.is_available():
        raise GenzipError("bench_triton needs a CUDA GPU and none is visible",
                          "run it on an NVIDIA GPU machine with `pip install 'genzip[gpu]'`")
    try:
        import triton  # noqa: F401 - the kernels below are triton JIT functions
    except ImportError:
        raise GenzipError("bench_triton needs the triton package, which is not installed",
                          "pip install 'genzip[gpu]'") from None
    if op not in ("window", "span"):
        raise GenzipError(f"unknown --op {op!r}", "use --op window or --op span")
    window = max(1, seq // 8) if window is None else window
    gen = torch.Generator(device="cuda").manual_seed(seed)
    q, k, v = (torch.randn((batch, heads, seq, dim), device="cuda", dtype=getattr(torch, dtype), generator=gen)
               for _ in range(3))
    if op == "window":
        from genzip.plugins.triton_window import window_attention

        sparse = lambda: window_attention(q, k, v, window=window)  # noqa: E731
        dense = lambda: F.scaled_dot_product_attention(q, k, v)  # noqa: E731
        pairs, dense_pairs = af.window_pairs(seq, window), af.dense_pairs(seq, seq)
    else:
        from genzip.plugins.triton_span import span_attention

        sinks = 64
        sparse = lambda: span_attention(q, k, v, spans=[window] * heads, sinks=sinks)  # noqa: E731
        dense = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
        pairs, dense_pairs = af.span_pairs(seq, window, sinks), af.dense_pairs(seq, seq, causal=True)
    times: dict[str, list[float]] = {"dense": [], "sparse": []}
    for i in range(warmup + repeat):
        for name, fn in (("dense", dense), ("sparse", sparse)):
            ms = _time_ms(torch, fn)
            if i >= warmup:
                times[name].append(ms)
    dense_ms, sparse_ms = statistics.median(times["dense"]), statistics.median(times["sparse"])
    return {
        "op": op, "seq": seq, "heads": heads, "dim": dim, "batch": batch, "dtype": dtype, "window": window,
        "repeat": repeat, "device": torch.cuda.get_device_name(), "torch": torch.__version__,
        "dense_ms": round(dense_ms, 4), "triton_ms": round(sparse_ms, 4),
        "speedup": round(dense_ms / sparse_ms, 3), "flop_bound": round(dense_pairs / pairs, 3),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seq", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--window", type=float, default=0.125,
                        help="window (op window: |i-j| <= w) or span (op span), a fraction of seq (< 1) or tokens")
    parser.add_argument("--op", choices=("window", "span"), default="window")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default="float16")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--json", action="store_true", help="JSON lines (the only output format)")


def run(args: argparse.Namespace) -> int:
    results = []
    for seq in args.seq:
        window = round(args.window * seq) if 0 < args.window < 1 else int(args.window)
        results.append(run_benchmark(seq=seq, heads=args.heads, dim=args.dim, window=window, op=args.op,
                                     batch=args.batch, dtype=args.dtype, repeat=args.repeat))
    for result in results:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_common.main("bench_triton.py", __doc__, add_arguments, run))
