"""Int8 attention scores (SageAttention-style) for ``annotate-precision{attention=int8}``.

The spec (a :class:`QuantSpec` with ``op="Attention"``) quantizes the QK^T batched
matmul of a self-attention ``Attention`` node: Q per tensor, dynamically, as uint8
(``DynamicQuantizeLinear``); K per tensor, dynamically, as symmetric int8 after
*smoothing* (subtracting K's mean over the tokens of each head). Smoothing leaves the
softmax unchanged, since it shifts every score of a query row by the same
``q·mean(K)``, but it removes the shared offset that dominates K's range, so the int8
grid covers what distinguishes the keys. The softmax and P·V stay fp32: P's values
span orders of magnitude per row, which a per-tensor uint8 grid cannot hold.

Form after ``quant`` (standard ONNX ops; ORT's level-2 fusions turn
``MatMulInteger -> Cast -> Mul(scalar)`` into one ``MatMulIntegerToFloat`` int8 GEMM)::

    qu, qs, qz = DynamicQuantizeLinear(q)
    kc = k - ReduceMean(k, axis=-2);  ks = max(ReduceMax(|kc|) / 127, floor)
    s  = Cast(MatMulInteger(qu, Transpose(QuantizeLinear(kc, ks)), qz)) * (qs * ks * scale)
    y  = MatMul(Softmax(s), v)

Only the plain form is rewritten (checked by :func:`unsupported`): float32 4-D
q/k/v with equal head counts, no mask, no past, not causal, no softcap, one output.
TensorRT has no ``MatMulInteger``; this is an ONNX Runtime form (``genzip lint
--target trt`` flags it), and TensorRT runs attention in its own fused kernels.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from genzip.passes.quant._qdq import Builder
from genzip.passes.quant._scales import SCALE_FLOOR
from genzip.passes.quant._spec import QuantSpec, TensorSpec

# Model metadata: how many attentions ``quant`` gave int8 scores (their Attention nodes are gone).
Q_SPEC = TensorSpec(input=0, dtype="uint8", granularity="per-tensor", dynamic=True, symmetric=False)
K_SPEC = TensorSpec(input=1, dtype="int8", granularity="per-tensor", dynamic=True, symmetric=True)


def unsupported(node: ir.Node) -> str | None:
    """Why ``node`` cannot take int8 scores, or None if it can."""
    if node.op_type != "Attention" or node.domain != "":
        return "not an ONNX Attention node"
    if len(node.inputs) != 3 or any(v is None for v in node.inputs):
        return "attention with a mask or past state"
    if any(o is not None and (o.uses() or o.is_graph_output()) for o in node.outputs[1:]):
        return "attention with present/qk outputs"
    attrs = node.attributes
    if attrs.get_int("is_causal", 0) or attrs.get_float("softcap", 0.0) or attrs.get_int("qk_matmul_output_mode", 0):
        return "causal or soft-capped attention"
    q, k, v = node.inputs
    if any(x.dtype not in (None, ir.DataType.FLOAT) for x in (q, k, v)):
        return "attention in a dtype other than float32"
    if any(x.shape is None or len(x.shape) != 4 for x in (q, k, v)):
        return "attention without 4-D q/k/v shapes"
    hq, hk = q.shape[1], k.shape[1]
    if not isinstance(hq, int) or hq != hk:
        return "grouped-query attention (or unknown head counts)"
    return None


def attention_spec(module: str | None, scheme: str) -> QuantSpec:
    return QuantSpec(scheme=scheme, op="Attention", module=module, keep=None, weight=K_SPEC, activation=Q_SPEC)


def rewrite_attention(graph: ir.Graph, node: ir.Node) -> None:
    """Replace ``node`` by the int8-score form above; its output value keeps its uses."""
    q, k, v = node.inputs
    scale = node.attributes.get_float("scale", float(q.shape[3]) ** -0.5 if isinstance(q.shape[3], int) else 0.0)
    if scale <= 0.0:
        raise ValueError(f"{node.name}: Attention without a scale attribute needs a static head size")
    b = Builder(graph, node.name or "attention")
    dql = ir.node("DynamicQuantizeLinear", [q], num_outputs=3, name=f"{b.prefix}.DynamicQuantizeLinear")
    b.nodes.append(dql)
    qu = dql.outputs
    k_mean = b.op("ReduceMean", k, b.initializer("token_axis", np.array([-2], np.int64)), keepdims=1)
    kc = b.op("Sub", k, k_mean)
    k_amax = b.op("ReduceMax", b.op("Abs", kc), keepdims=0)
    ks = b.op("Max", b.op("Mul", k_amax, b.initializer("inv127", np.array(1 / 127, np.float32))),
                      b.initializer("floor", np.array(SCALE_FLOOR, np.float32)))
    zero = b.initializer("k_zero", np.array(0, np.int8))
    kt = b.op("Transpose", b.op("QuantizeLinear", kc, ks, zero), perm=[0, 1, 3, 2])
    scores32 = b.op("MatMulInteger", qu[0], kt, qu[2], zero)
    factor = b.op("Mul", b.op("Mul", qu[1], ks), b.initializer("scale", np.array(scale, np.float32)))
    scores = b.op("Mul", b.op("Cast", scores32, to=ir.DataType.FLOAT), factor)
    y = b.op("MatMul", b.op("Softmax", scores, axis=-1), v)
    graph.insert_before(node, b.nodes)
    out = node.outputs[0]
    y.dtype, y.shape = out.dtype, out.shape
    out.replace_all_uses_with(y, replace_graph_outputs=True)
    graph.remove(node, safe=True)
    y.name = out.name


