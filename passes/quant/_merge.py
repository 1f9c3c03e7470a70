"""Sibling GEMM merging for ``quant{merge=true}``: quantized MatMuls that read the
same activation with the same spec and range (attention q/k/v, cross-attention k/v)
become one quantized MatMul over the concatenated weight, then a Split.

Exact with respect to per-node quantization: weight scales are per output column,
so concatenating along N changes no scale, and the shared activation gets the one
range all siblings were calibrated with. It saves the repeated activation
quantization and gives the int8 GEMM a wider N.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from genzip.passes.quant._qdq import Builder, drop_if_unused, reroute
from genzip.passes.quant._spec import QuantSpec


def mergeable(node: ir.Node, spec: QuantSpec) -> bool:
    x = node.inputs[0]
    w = node.inputs[1]
    return (node.op_type == "MatMul" and spec.keep is None and not spec.bos and spec.activation is not None
            and w is not None and w.const_value is not None and x is not None and x.shape is not None and len(x.shape) >= 2)


def sibling_groups(items: list[tuple[ir.Node, QuantSpec, float | None]]) -> list[list[int]]:
    """Indices of items grouped by (activation value, spec, range); singletons included."""
    groups: dict[tuple, list[int]] = {}
    order: list[list[int]] = []
    for i, (node, spec, amax) in enumerate(items):
        if not mergeable(node, spec):
            order.append([i])
            continue
        key = (id(node.inputs[0]), spec.weight, spec.activation, amax)
        if key not in groups:
            groups[key] = []
            order.append(groups[key])
        groups[key].append(i)
    return order


def rewrite_merged(graph: ir.Graph, nodes: list[ir.Node], spec: QuantSpec, amax: float | None, fused: bool,
                   shared: dict) -> None:
    first = nodes[0]
    b = Builder(graph, f"{first.name or spec.module}.merged")
    x = first.inputs[0]
    weights = [n.inputs[1] for n in nodes]
    w = np.concatenate([v.const_value.numpy() for v in weights], axis=1).astype(np.float32)
    act = spec.activation
    if act.dynamic:
        if x.name not in shared:
            shared[x.name] = b.quantize_tokens(x)
        y = b.token_gemm(shared[x.name], w, fused, spec.weight.dtype)
    else:
        y = b.op("MatMul", b.qdq(x, amax, act.dtype), b.weight_dq(w, spec.weight))
    sizes = b.initializer("split", np.array([v.const_value.shape[1] for v in weights], np.int64))
    split = ir.node("Split", [y, sizes], {"axis": -1}, num_outputs=len(nodes), name=f"{b.prefix}.Split")
    b.nodes.append(split)
    graph.insert_before(first, b.nodes)
    for node, part in zip(nodes, split.outputs):
        reroute(graph, node.outputs[0], part)
        graph.remove(node, safe=True)
    for v in weights:
        drop_if_unused(graph, v)
