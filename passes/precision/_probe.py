"""One ONNX Runtime session that can quantize any subset of layers, chosen per run.

Building a session per (layer, format) would cost a graph copy and an ORT
optimization each time; instead every candidate layer gets switchable fake
quantization, gated by scalar graph inputs (all 0 = the FP model, bit-exact):

    W_eff = W + Σ_f  g[l, f] · (DQ(Q_f(W)) − W)        (one delta initializer per format)
    x_eff = x + Σ_c  a[l, c] · (QDQ_c(x) − x)           (c: int8, float8e4m3fn, fp16)

``DQ(Q_f(W))`` is the dequantized initializer ``quant`` writes and ``QDQ_c`` uses the
absmax range ``calibrate`` would record on the same samples, so setting the gates of
an allocation reproduces the arithmetic of the quantized graph. A ``bos`` layer
(MixDQ) is probed as ``quant`` builds it: tokens 1: through the fake quantizers, with
a range that ignores token 0, and token 0's output from the fp32 weight. The extra
elementwise work is O(weights + activations) per layer, small next to the GEMMs.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from genzip.passes.precision import _metrics as metrics_mod
from genzip.passes.quant import _bos as bos_mod
from genzip.passes.quant import _scales as qs
from genzip.passes.quant._formats import DYNAMIC, FORMATS, GEMM_ONLY, fake_weight
from genzip.passes.quant._qdq import Builder

GATE = "genzip.sens"


def allowed(op: str, fmt: str) -> bool:
    return not (op == "Conv" and fmt in (*GEMM_ONLY, *DYNAMIC))


def weight_gate(layer: int, fmt: str) -> str:
    return f"{GATE}.l{layer}.{fmt}.w"


def act_gate(layer: int, dtype: str) -> str:
    return f"{GATE}.l{layer}.{dtype}.a"


def activation_amax(model: ir.Model, act_keys: list[str], samples) -> tuple[dict[str, float], list[dict]]:
    """(absmax of each ``_bos.range_key`` over ``samples``, the FP outputs of each sample);
    the model is opened by path with external data when large (never one protobuf)."""
    from genzip.passes.quant import _calib_data as data_mod

    outputs = [o.name for o in model.graph.outputs]
    session = data_mod.probe_session(model, sorted({bos_mod.key_tensor(k) for k in act_keys}))
    names = [o.name for o in session.get_outputs()]
    amax = dict.fromkeys(act_keys, 0.0)
    refs = []
    for feeds in samples:
        got = dict(zip(names, session.run(names, feeds)))
        refs.append({k: got[k] for k in outputs})
        for key in act_keys:
            name = bos_mod.key_tensor(key)
            x = bos_mod.ranged_values(key, feeds[name] if name in feeds else got[name])
            if x.size:
                amax[key] = max(amax[key], float(np.max(np.abs(x))))
    return amax, refs


def _act_qdq(b: Builder, x: ir.Value, dtype: str, amax: float) -> ir.Value:
    if dtype == "int8-token":  # quant's per-token form, dequantized: (q - 128) * row_amax / 127
        x_u8, row_amax, shift = b.quantize_tokens(x)
        one = b.initializer("one", np.array(1.0, np.float32))
        per_row = b.op("Div", row_amax, b.initializer("qmax", np.array(qs.INT8_MAX, np.float32)))
        return b.op("Mul", b.op("DequantizeLinear", x_u8, one, shift), per_row)
    if dtype == "fp16":
        return b.op("Cast", b.op("Cast", x, to=ir.DataType.FLOAT16), to=ir.DataType.FLOAT)
    scale = b.initializer("scale", np.array(qs.floor_scale(amax / qs.qmax(dtype)), np.float32))
    if dtype == "float8e4m3fn":
        q = b.op("QuantizeLinear", x, scale, output_dtype=ir.DataType.FLOAT8E4M3FN)
        return b.op("DequantizeLinear", q, scale)
    zp = b.initializer("zp", np.zeros((), np.int8))
    return b.op("DequantizeLinear", b.op("QuantizeLinear", x, scale, zp), scale, zp)


def build_gated(model: ir.Model, layers: list[int], formats: list[str], amax: dict[str, float],
                block: int, bos: frozenset[int] = frozenset()) -> list[str]:
    """Rewrite ``model`` (a private copy) in place; ``layers`` index ``list(model.graph)``,
    ``bos`` holds the positions in ``layers`` of MixDQ ``bos`` MatMuls.
    Returns the names of the gate inputs."""
    graph = model.graph
    nodes = list(graph)
    gates: list[str] = []

    def gate(name: str) -> ir.Value:
        v = ir.Value(name=name, shape=ir.Shape([]), type=ir.TensorType(ir.DataType.FLOAT))
        graph.inputs.append(v)
        gates.append(name)
        return v

    for li, index in enumerate(layers):
        node = nodes[index]
        b = Builder(graph, f"{GATE}.l{li}")

        w_value = node.inputs[1]
        w = w_value.const_value.numpy().astype(np.float32)
        trans_b = node.op_type == "Gemm" and bool(node.attributes.get_int("transB", 0))
        w_eff = w_value
        for fmt in formats:
            if not allowed(node.op_type, fmt):
                continue
            delta = b.initializer(f"{fmt}.dw", fake_weight(w, node.op_type, trans_b, fmt, block) - w)
            w_eff = b.op("Add", w_eff, b.op("Mul", gate(weight_gate(li, fmt)), delta))
        x = node.inputs[0]
        is_bos = li in bos
        x_eff = rest = b.after_first_token(x) if is_bos else x
        for dtype in sorted({FORMATS[f].act_dtype for f in formats if allowed(node.op_type, f)} - {None}):
            sub = Builder(graph, f"{b.prefix}.{dtype}")
            sub.nodes = b.nodes  # one list: the Q/DQ nodes go where the gate needs them
            fq = _act_qdq(sub, rest, dtype, amax.get(bos_mod.range_key(x.name, is_bos), 0.0))
            x_eff = b.op("Add", x_eff, b.op("Mul", gate(act_gate(li, dtype)), b.op("Sub", fq, rest)))
        graph.insert_before(node, b.nodes)
        node.replace_input_with(0, x_eff)
        node.replace_input_with(1, w_eff)
        if is_bos:
            _bos_first_token(graph, node, x, w_value, Builder(graph, f"{b.prefix}.bos"))
    return gates


def _bos_first_token(graph: ir.Graph, node: ir.Node, x: ir.Value, w: ir.Value, b: Builder) -> None:
    """``node`` now computes tokens 1: only; put token 0's fp32 output in front (quant
    writes that row as a constant), so downstream sees the full sequence."""
    y = node.outputs[0]
    uses = list(y.uses())  # before the Concat below becomes one more
    full = b.concat_tokens(b.op("MatMul", b.first_token(x), w), y)
    graph.insert_after(node, b.nodes)
    for user, index in uses:
        user.replace_input_with(index, full)
    for i, out in enumerate(graph.outputs):
        if out is y:  # the graph output keeps its name (the probe reads outputs by name)
            name, y.name = y.name, f"{y.name}.tokens_1"
            full.name = name
            graph.outputs[i] = full


def gate_feeds(gates: list[str], assignment: dict[int, str]) -> dict[str, np.ndarray]:
    """Feeds that quantize layer ``l`` to ``assignment[l]`` and leave the rest FP."""
    on = set()
    for layer, fmt in assignment.items():
        on.add(weight_gate(layer, fmt))
        if FORMATS[fmt].act_dtype is not None:
            on.add(act_gate(layer, FORMATS[fmt].act_dtype))
    return {g: np.array(1.0 if g in on else 0.0, np.float32) for g in gates}


class ProbeWorker:
    """One gated session and what every probe reads; ``measure`` is one work unit of the
    sweep (``genzip.parallel``): quantize layer ``li`` alone to ``fmt`` and return the
    output change under each metric. It depends only on its unit, so any worker (in this
    process or on a Ray cluster) returns the same values. ``gated`` is the serialized model,
    or the path of a large one saved with external data (then every worker must see that
    path: this machine's workers, or a cluster with a shared filesystem)."""

    def __init__(self, gated: bytes | str, gates: list[str], samples: list[dict], refs: list[np.ndarray],
                 out_name: str, metrics: list[str], *, threads: int | None = None):
        from genzip.ort_session import make_session

        self.session = make_session(gated, threads=threads)
        self.gates, self.samples, self.refs, self.out_name, self.metrics = gates, samples, refs, out_name, metrics

    def measure(self, unit: tuple[int, str]) -> list[float]:
        li, fmt = unit
        feeds_g = gate_feeds(self.gates, {li: fmt})
        outs = [self.session.run([self.out_name], {**feeds, **feeds_g})[0] for feeds in self.samples]
        return [metrics_mod.measure(m, self.refs, outs) for m in self.metrics]
