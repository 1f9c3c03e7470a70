"""``quant{scheme=...}``: consume every ``genzip.quant`` annotation and insert the
quantized computation it describes.

Invariant after the pass (fact ``quantized``; checked in ``ensures``): no node
carries ``genzip.quant`` or ``genzip.quant.calib``; every annotated node without
``keep`` computes in the spec's format (forms in ``quant_qdq``):

* ``w8a8`` / ``fp8``: activation Q->DQ (static per-tensor scale amax/qmax from
  ``calibrate``, zero point 0) and weight DQ from an int8 / float8e4m3fn initializer
  (per output channel), on the GEMM's inputs; TensorRT fuses these into int8/fp8
  GEMMs, ONNX Runtime into its QDQ int8 kernels;
* ``w8a8-dynamic``: the per-token MatMulInteger form, which ORT CPU runs as a u8s8
  int8 GEMM. TensorRT has no MatMulInteger: for TensorRT use ``w8a8`` (static) or
  ``fp8``; ``genzip lint`` flags the dynamic form;
* ``w4a16``: weight-only int4 ``DequantizeLinear(block_size=B)`` (opset >= 21),
  which TensorRT accepts and ORT CPU fuses into ``MatMulNBits``;
* ``w4a8`` (mixed precision): the ``w4a16`` int4 weight form plus the static int8
  activation Q->DQ of ``w8a8`` (ORT runs it; TensorRT has no int4 x int8 GEMM);
* ``Attention`` nodes (``annotate-precision{attention=int8}``): int8 QK^T scores,
  dynamic per-tensor Q (uint8) and smoothed K (int8), fp32 softmax and P·V
  (``quant_attention``; an ONNX Runtime form);
* ``bos`` nodes (MixDQ): tokens 1: run through the quantized GEMM; token 0's output is
  the constant ``row @ W`` precomputed from the prompt-invariant token-0 row
  ``calibrate`` recorded (``_bos``: refused when token 0 varies across prompts),
  broadcast over the batch and joined by Concat along axis -2; no fp32 copy of W.

``merge`` (default false, no gain measured on ORT CPU): quantized MatMuls reading one tensor with one spec and
range (q/k/v) become one GEMM over the concatenated weight plus a Split
(``quant_merge``; exact, since weight scales are per output column).

``scheme`` (optional) must match the annotations, so a spec cannot silently mix
what ``annotate-precision`` froze with a different insertion.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Literal

import numpy as np
import onnx_ir as ir

from genzip.errors import GenzipError
from genzip.metadata import INT8_SCORES_KEY
from genzip.passes.infra.context import PassContext
from genzip.passes.infra.contract import GenzipPass, GenzipPassResult
from genzip.passes.quant._attention import rewrite_attention
from genzip.passes.quant._bos import invariant_row
from genzip.passes.quant._merge import rewrite_merged, sibling_groups
from genzip.passes.quant._qdq import Builder, drop_if_unused, reroute
from genzip.passes.quant._ranges import ranged
from genzip.passes.quant._spec import CALIB_KEY, DYNAMIC_SCHEMES, META_KEY, QuantSpec, annotated_nodes, calib_of

MIN_OPSET = {"w8a8": 13, "w8a8-dynamic": 13, "fp8": 19, "w4a16": 21, "w4a8": 21, "w4a8-dynamic": 21}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Options:
    scheme: Literal["w8a8", "w8a8-dynamic", "w4a16", "w4a8", "w4a8-dynamic", "fp8"] | None = None
    # w8a8-dynamic GEMM: "ort" = com.microsoft MatMulIntegerToFloat (fast on ORT CPU),
    # "onnx" = standard MatMulInteger -> Cast -> Mul.
    dynamic_form: Literal["ort", "onnx"] = "ort"
    # Merge quantized MatMuls that read one tensor (q/k/v) into one GEMM + Split. Off by
    # default: on bench-dit (ORT CPU) the Split ate the gain (1.73x vs 1.74x over fp32).
    merge: bool = False


def _weight_bytes(graph: ir.Graph) -> int:
    return sum(v.const_value.nbytes for v in graph.initializers.values() if v.const_value is not None)


def _gemm_kn(node: ir.Node, w: np.ndarray) -> np.ndarray:
    """The weight as [K, N] with Gemm's alpha folded in."""
    if node.op_type == "Gemm":
        w = w.T if node.attributes.get_int("transB", 0) else w
        return w * np.float32(node.attributes.get_float("alpha", 1.0))
    return w


def _gemm_bias(b: Builder, node: ir.Node, y: ir.Value) -> ir.Value:
    """A Gemm's ``beta * C`` added to the replacement's output (MatMul: unchanged)."""
    if node.op_type == "Gemm" and len(node.inputs) > 2 and node.inputs[2] is not None:
        c = node.inputs[2]
        beta = node.attributes.get_float("beta", 1.0)
        if beta != 1.0:
            c = b.op("Mul", c, b.initializer("beta", np.array(beta, np.float32)))
        y = b.op("Add", y, c)
    return y


def _tokens(b: Builder, x: ir.Value, shared: dict) -> tuple:
    # q/k/v reading one tensor share its per-token quantization (no fusion needs a
    # private copy here, unlike the static Q/DQ form).
    if x.name not in shared:
        shared[x.name] = b.quantize_tokens(x)
    return shared[x.name]


def _rewrite_ranged(graph: ir.Graph, node: ir.Node, spec: QuantSpec, amax: float | None, fused: bool,
                    shared: dict, stack: np.ndarray, index: ir.Value) -> None:
    """A weight chosen per timestep range (``smooth{ranges=K}``): each slice quantized on its own."""
    weight, act = spec.weight, spec.activation
    if spec.bos or weight.granularity != "per-channel" or weight.dtype not in ("int8", "int4") or (
            weight.dtype == "int4" and not (act is not None and act.dynamic)):
        raise GenzipError(f"{node.name or spec.module}: a timestep-ranged weight cannot take {spec.scheme} "
                          f"({weight.granularity} {weight.dtype}{', bos' if spec.bos else ''})",
                          "use w8a8, w8a8-dynamic or w4a8-dynamic with smooth{ranges=K}, or smooth with ranges=1")
    b = Builder(graph, node.name or spec.module or node.op_type)
    gather = node.inputs[1].producer()
    if act is not None and act.dynamic:
        y = b.token_gemm_ranged(_tokens(b, node.inputs[0], shared), np.stack([_gemm_kn(node, w) for w in stack]),
                                index, fused, weight.dtype)
        y = _gemm_bias(b, node, y)
        graph.insert_before(node, b.nodes)
        reroute(graph, node.outputs[0], y)
        graph.remove(node, safe=True)
    else:
        w_dq = b.weight_dq_ranged(stack, index, weight)
        if act is not None:
            node.replace_input_with(0, b.qdq(node.inputs[0], amax, act.dtype))
        node.replace_input_with(1, w_dq)
        graph.insert_before(node, b.nodes)
    stack_value = gather.inputs[0]
    graph.remove(gather, safe=True)
    drop_if_unused(graph, stack_value)


def _rewrite(graph: ir.Graph, node: ir.Node, spec: QuantSpec, amax: float | None, fused: bool,
             shared: dict, bos_row: np.ndarray | None) -> None:
    x, w_value = node.inputs[0], node.inputs[1]
    stacked = ranged(w_value)
    if stacked is not None:
        _rewrite_ranged(graph, node, spec, amax, fused, shared, *stacked)
        return
    b = Builder(graph, node.name or spec.module or node.op_type)
    w = w_value.const_value.numpy()
    act = spec.activation
    if act is not None and act.dynamic or spec.bos:
        rest = b.after_first_token(x) if spec.bos else x
        if act is not None and act.dynamic:
            tokens = b.quantize_tokens(rest) if spec.bos else _tokens(b, x, shared)
            y = b.token_gemm(tokens, _gemm_kn(node, w).astype(np.float32), fused, spec.weight.dtype)
            y = _gemm_bias(b, node, y)
        else:  # static or weight-only BOS (MatMul only, see annotate-precision)
            x_q = rest if act is None else b.qdq(rest, amax, act.dtype)
            y = b.op("MatMul", x_q, b.weight_dq(w, spec.weight))
        if spec.bos:
            y = b.concat_tokens(b.bos_output(y, bos_row @ w.astype(np.float32)), y)
        graph.insert_before(node, b.nodes)
        reroute(graph, node.outputs[0], y)
        graph.remove(node, safe=True)
    else:
        w_dq = b.weight_dq(w, spec.weight)
        if act is not None:
            # A Q->DQ pair per consumer, even where q/k/v read one tensor: ORT fuses
            # Q->DQ->MatMul into an int8 GEMM only when the Q output has one consumer
            # (a shared Q left q/k/v in fp32), and TensorRT accepts either.
            node.replace_input_with(0, b.qdq(x, amax, act.dtype))
        node.replace_input_with(1, w_dq)
        graph.insert_before(node, b.nodes)
    drop_if_unused(graph, w_value)


class QuantPass(GenzipPass):
    name = "quant"
    summary = "insert quantized weights and Q/DQ (w8a8, w8a8-dynamic, w4a16, w4a8, w4a8-dynamic, fp8) per the annotations"
    Options = Options
    requires_facts = frozenset({"quant-annotated"})
    ensures_facts = frozenset({"quantized"})
    invalidates_facts = frozenset({"quant-annotated", "quant-calibrated"})
    transforming = True

    def run(self, model: ir.Model, context: PassContext) -> GenzipPassResult:
        scheme = self.options.scheme
        graph = model.graph
        before = _weight_bytes(graph)
        todo = annotated_nodes(model, ops=None)
        for node, spec in todo:
            if scheme is not None and spec.scheme != scheme:
                raise GenzipError(
                    f"quant{{scheme={scheme}}} but {node.name or spec.module} was annotated for {spec.scheme}",
                    f"use annotate-precision{{scheme={scheme}}} (or drop scheme= from quant)",
                )
        schemes = {s.scheme for _, s in todo if s.keep is None}
        opset = model.opset_imports.get("", 0)
        for s in schemes:
            if opset < MIN_OPSET[s]:
                raise GenzipError(f"{s} needs opset >= {MIN_OPSET[s]}, the model has {opset}",
                                  "export at opset 23 (genzip's default) or convert the model first")
        counts = {"quantized": 0, "kept": 0, "bos": 0, "merged": 0, "attention": 0}
        items, bos_rows = [], {}
        for node, spec in todo:
            calib = calib_of(node)
            if spec.bos and spec.keep is None:
                bos_rows[id(node)] = invariant_row(calib, node.name or spec.module or "a bos node")
            node.metadata_props.pop(META_KEY, None)
            node.metadata_props.pop(CALIB_KEY, None)
            if spec.keep is not None:
                counts["kept"] += 1
                continue
            act = spec.activation
            if act is not None and not act.dynamic and calib is None:
                raise GenzipError(
                    f"{node.name or spec.module} needs a calibrated activation range for {spec.scheme}",
                    "put calibrate before quant (or use scheme w8a8-dynamic / w4a8-dynamic / w4a16)",
                )
            items.append((node, spec, calib.get("amax") if calib else None))
        shared: dict = {}  # tensor name -> its per-token quantization (w8a8-dynamic)
        fused = self.options.dynamic_form == "ort"
        groups = sibling_groups(items) if self.options.merge else [[i] for i in range(len(items))]
        for group in groups:
            node, spec, amax = items[group[0]]
            if len(group) > 1:
                rewrite_merged(graph, [items[i][0] for i in group], spec, amax, fused, shared)
                counts["merged"] += len(group)
            elif spec.op == "Attention":
                rewrite_attention(graph, node)
                counts["attention"] += 1
            else:
                _rewrite(graph, node, spec, amax, fused, shared, bos_rows.get(id(node)))
            counts["quantized"] += len(group)
            counts["bos"] += spec.bos
        if counts["attention"]:
            model.metadata_props[INT8_SCORES_KEY] = str(counts["attention"])
        if schemes & set(DYNAMIC_SCHEMES) and self.options.dynamic_form == "ort":
            model.opset_imports.setdefault("com.microsoft", 1)
        after = _weight_bytes(graph)
        ops = [n.op_type for n in graph]
        stats = {**counts, "Q": ops.count("QuantizeLinear"), "DQ": ops.count("DequantizeLinear"),
                 "MatMulInteger": ops.count("MatMulInteger") + ops.count("MatMulIntegerToFloat"), "weight_bytes": after,
                 "weight_ratio": round(after / before, 4) if before else 1.0}
        why = None
        if not counts["quantized"]:
            kept = collections.Counter(spec.keep for _, spec in todo if spec.keep is not None)
            why = (f"quantized no layer: {len(todo)} annotated"
                   + (f", all kept ({', '.join(f'{c} {k}' for k, c in kept.most_common(3))})" if kept else ""))
        return GenzipPassResult(model, bool(todo), stats, noop_reason=why)
