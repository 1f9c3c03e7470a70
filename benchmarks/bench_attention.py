"""``python benchmarks/bench_attention.py``: dense ``Attention`` vs ``genzip.WindowAttention`` in ORT CPU.

    python benchmarks/bench_attention.py --seq N [--heads H] [--dim D] [--window W] [--chunk C] [--repeat N] [--json]

Invariant: both models take the same q, k, v [B, H, N, D] inputs; the dense one is a
single canonical ``Attention`` node (the form ``canonicalize-attn`` produces, built by
``genzip.passes.attention._canonical``), the window one a single
``genzip.WindowAttention``. One process times both interleaved, iteration by
iteration, so machine load affects both alike (medians of ``--repeat`` runs each), and
reports dense ms, window ms, the measured speedup and the exact FLOP-ratio bound;
``--json`` prints one JSON object with at least ``dense_ms``, ``window_ms``,
``speedup`` (dense / window) and ``flop_bound`` (dense FLOPs / window FLOPs).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import _common
import numpy as np
import onnx_ir as ir

from genzip.errors import GenzipError
from genzip.passes.attention import _flops as af
from genzip.passes.attention._canonical import OPSET, canonical_attention_node
from genzip.plugins import window_attention


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seq", type=int, required=True, help="sequence length N")
    parser.add_argument("--heads", type=int, default=8, help="attention heads H (default 8)")
    parser.add_argument("--dim", type=int, default=64, help="head dim D (default 64)")
    parser.add_argument("--window", default="0.125",
                        help="window w (|i-j| <= w): a fraction of N like 0.125, or a token count like 512")
    parser.add_argument("--batch", type=int, default=1, help="batch B (default 1)")
    parser.add_argument("--repeat", type=int, default=10, help="timed runs of each model (default 10)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs of each model first (default 1)")
    parser.add_argument("--threads", type=int, default=2, help="ORT intra-op threads (default 2)")
    parser.add_argument("--chunk", type=int, default=None, help="query chunk of the window body (default: chosen)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def qkv_inputs(batch, heads, seq, dim) -> list[ir.Value]:
    """Graph inputs q, k, v (float32) of shape [batch, heads, seq, dim]."""
    return [ir.Value(name=name, type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([batch, heads, seq, dim]))
            for name in "qkv"]


def _model(inputs: list[ir.Value], make_node) -> ir.Model:
    """A model around the one node ``make_node(model, inputs)`` returns, output ``y`` typed."""
    graph = ir.Graph(inputs, [], nodes=[], opset_imports={"": OPSET}, name="attention")
    model = ir.Model(graph, ir_version=10, producer_name="genzip-bench")
    node = make_node(model, inputs)
    graph.append(node)
    out = node.outputs[0]
    out.name, out.dtype = "y", ir.DataType.FLOAT
    out.shape = ir.Shape(list(inputs[0].shape.dims[:3]) + [inputs[2].shape.dims[3]])
    graph.outputs.append(out)
    return model


def dense_model(batch, heads, seq, dim, *, causal: bool = False) -> ir.Model:
    return _model(qkv_inputs(batch, heads, seq, dim),
                  lambda _, ins: canonical_attention_node(*ins, scale=dim**-0.5, causal=causal))


def window_model(batch, heads, seq, dim, window: int, chunk: int | None = None) -> ir.Model:
    return _model(qkv_inputs(batch, heads, seq, dim),
                  lambda m, ins: window_attention.make_node(m, ins, window=window, scale=dim**-0.5, chunk=chunk))


def session(model: ir.Model, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(ir.to_proto(model).SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def resolve_window(spec: str | float, seq: int) -> int:
    """``0.125`` (a fraction of seq, < 1) or ``512`` (tokens) -> tokens."""
    value = float(spec)
    if 0 < value < 1:
        return round(value * seq)
    if value < 0 or value != int(value):
        raise ValueError(f"window {spec!r} is neither a fraction in (0, 1) nor a whole token count")
    return int(value)


def run_benchmark(
    *, seq: int, heads: int, dim: int, window: int, batch: int = 1, repeat: int = 10,
    warmup: int = 1, threads: int = 2, chunk: int | None = None, seed: int = 0,
) -> dict:
    """Time dense vs window attention, interleaved; return the figures as a dict."""
    chunk = chunk if chunk is not None else window_attention.choose_chunk(window)
    sessions = {
        "dense": session(dense_model(batch, heads, seq, dim), threads),
        "window": session(window_model(batch, heads, seq, dim, window, chunk), threads),
    }
    rng = np.random.default_rng(seed)
    feed = {name: rng.standard_normal((batch, heads, seq, dim), dtype=np.float32) for name in "qkv"}
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for i in range(warmup + repeat):
        for name, sess in sessions.items():
            start = time.perf_counter()
            sess.run(None, feed)
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    dense_ms = statistics.median(times["dense"]) * 1e3
    window_ms = statistics.median(times["window"]) * 1e3
    dense_flops = af.attention_flops(batch, heads, af.dense_pairs(seq, seq), dim)
    window_flops = af.attention_flops(batch, heads, af.window_pairs(seq, window), dim)
    return {
        "seq": seq, "heads": heads, "dim": dim, "batch": batch, "window": window, "chunk": chunk,
        "threads": threads, "repeat": repeat,
        "dense_ms": round(dense_ms, 3), "window_ms": round(window_ms, 3),
        "speedup": round(dense_ms / window_ms, 3),
        "flop_bound": round(dense_flops / window_flops, 3),
        "efficiency": round((dense_ms / window_ms) / (dense_flops / window_flops), 3),
        "dense_flops": dense_flops, "window_flops": window_flops,
    }


def run(args: argparse.Namespace) -> int:
    for name in ("seq", "heads", "dim", "batch", "repeat", "threads"):
        if getattr(args, name) < 1:
            raise GenzipError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0 or (args.chunk is not None and args.chunk < 1):
        raise GenzipError("--warmup must be >= 0 and --chunk >= 1")
    try:
        window = resolve_window(args.window, args.seq)
    except ValueError as e:
        raise GenzipError(str(e), "write --window 0.125 or --window 512") from None
    result = run_benchmark(
        seq=args.seq, heads=args.heads, dim=args.dim, window=window, batch=args.batch,
        repeat=args.repeat, warmup=args.warmup, threads=args.threads, chunk=args.chunk,
    )
    out = sys.stdout
    if args.json:
        out.write(json.dumps(result) + "\n")
        return 0
    out.write(
        f"N={result['seq']} H={result['heads']} D={result['dim']} B={result['batch']} "
        f"w={result['window']} chunk={result['chunk']} threads={result['threads']}\n"
        f"dense   {result['dense_ms']:10.2f} ms\n"
        f"window  {result['window_ms']:10.2f} ms\n"
        f"speedup {result['speedup']:10.2f}x  (FLOP bound {result['flop_bound']:.2f}x, "
        f"{100 * result['efficiency']:.0f}% of it)\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(_common.main("bench_attention.py", __doc__, add_arguments, run))
