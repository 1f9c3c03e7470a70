"""Dense vs window attention speed in ONNX Runtime CPU (core of ``genzip bench-attention``).

Invariant: both models take the same q, k, v [B, H, N, D] inputs; the dense one is
a single canonical ``Attention`` node (the form ``canonicalize-attn`` produces),
the window one a single ``genzip.WindowAttention``. They run in one process,
interleaved iteration by iteration, so machine load affects both alike; the
reported times are medians. ``flop_bound`` is the exact dense/window FLOP ratio.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import onnx_ir as ir

from genzip.passes import attn_flops as af
from genzip.plugins import window_attention

OPSET = 23


def canonical_attention_node(
    q: ir.Value, k: ir.Value, v: ir.Value, *, scale: float, causal: bool = False,
    kind: str = "self", index: int = 0, name: str | None = None,
) -> ir.Node:
    """An ``Attention`` node in canonical form: explicit scale/is_causal and genzip.attn metadata."""
    attrs = ir.convenience.convert_attributes({"scale": float(scale), "is_causal": int(causal)})
    meta = {af.KIND_KEY: kind, af.INDEX_KEY: str(index), af.SCOPE_KEY: f"blocks.{index}.attn"}
    return ir.Node("", "Attention", [q, k, v], attrs, num_outputs=1, name=name or f"attn_{index}",
                   metadata_props=meta)


def qkv_inputs(batch, heads, seq, dim, kv_heads=None) -> list[ir.Value]:
    """Graph inputs q, k, v (float32); dims may be ints or symbolic names."""
    kv_heads = heads if kv_heads is None else kv_heads
    return [ir.Value(name=name, type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([batch, h, seq, dim]))
            for name, h in (("q", heads), ("k", kv_heads), ("v", kv_heads))]


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
