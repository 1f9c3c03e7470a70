"""Fusions genzip applies to ONNX Runtime's optimized graph, where ORT leaves work undone.

``fuse_integer_gemm_bias``: ORT fuses a W8A8 ``Q -> DQ -> MatMul`` into
``com.microsoft.MatMulIntegerToFloat`` but leaves the layer's bias as a separate
``Add``, one more pass over every GEMM output. The contrib op takes the bias as its
7th input and adds it inside the GEMM's output loop.

Invariant after the pass: no ``MatMulIntegerToFloat`` without a bias has its output
used only by an ``Add`` with a constant 1-D float32 tensor whose length is the output
width N of the GEMM's constant ``[K, N]`` weight; each such pair is one ``MatMulIntegerToFloat`` with that bias, writing
the Add's output value (same name), so the graph's outputs and consumers are unchanged.
"""

from __future__ import annotations

import onnx_ir as ir

_OP, _DOMAIN, _BIAS = "MatMulIntegerToFloat", "com.microsoft", 6


def _bias_add(gemm: ir.Node) -> tuple[ir.Node, ir.Value] | None:
    out = gemm.outputs[0]
    uses = list(out.uses())
    if len(uses) != 1 or out.is_graph_output():
        return None
    add = uses[0].node
    if add.op_type != "Add" or add.domain != "" or len(add.inputs) != 2:
        return None
    bias = add.inputs[1 - uses[0].idx]
    const = bias.const_value if bias is not None else None
    if const is None or const.dtype != ir.DataType.FLOAT or len(const.shape) != 1:
        return None
    # Output width N from the GEMM's constant [K, N] weight (ORT drops intermediate shapes).
    weight = gemm.inputs[1].const_value if len(gemm.inputs) > 1 and gemm.inputs[1] is not None else None
    if weight is None or len(weight.shape) != 2 or const.shape[0] != weight.shape[1]:
        return None
    return add, bias


def fuse_integer_gemm_bias(model: ir.Model) -> int:
    """Fold constant bias Adds into ``MatMulIntegerToFloat``; returns how many."""
    fused = 0
    graph = model.graph
    for gemm in list(graph):
        if gemm.op_type != _OP or gemm.domain != _DOMAIN:
            continue
        inputs = list(gemm.inputs)
        if len(inputs) > _BIAS and inputs[_BIAS] is not None:
            continue
        found = _bias_add(gemm)
        if found is None:
            continue
        add, bias = found
        inputs += [None] * (_BIAS + 1 - len(inputs))
        inputs[_BIAS] = bias
        fused_node = ir.Node(_DOMAIN, _OP, inputs, attributes=list(gemm.attributes.values()),
                             num_outputs=1, name=gemm.name)
        graph.insert_before(gemm, fused_node)
        result, target = fused_node.outputs[0], add.outputs[0]
        if target.dtype is not None:
            result.dtype, result.shape = target.dtype, target.shape
        target.replace_all_uses_with(result, replace_graph_outputs=True)
        graph.remove([add, gemm], safe=True)
        result.name = target.name
        fused += 1
    return fused
