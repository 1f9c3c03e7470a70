"""Give every exported ``Attention`` mask its query axis, which ONNX Runtime requires.

ONNX's ``Attention`` takes an ``attn_mask`` broadcastable to ``[B, H, Sq, Skv]``, and the
exporter passes diffusers' cross-attention mask as it is in PyTorch, ``[B, H, 1, Skv]``
(one row for every query: a padded prompt token is hidden from all image tokens).
ONNX Runtime's CPU kernel refuses that ("inconsistent q_sequence_length (between
attn_mask and Q)"): it reads the mask's second-to-last axis as the query length.

Invariant after :func:`expand_mask_queries`: every default-domain ``Attention`` node of
the graph given whose mask had a size-1 query axis (and whose query length is not 1)
reads ``Expand(mask, [1, ..., Sq, 1])`` instead, ``Sq`` taken from ``Q`` at run time
(so a dynamic query length stays dynamic); the values are the same mask, repeated.
The frontend applies it to its exports; ``canonicalize-attn`` to the Attention nodes it
builds from other exporters' MatMul/Add/Softmax chains, whose Add broadcast the mask.
"""

from __future__ import annotations

import onnx_ir as ir


def _query_axis(q: ir.Value) -> int | None:
    """The query-length axis of ``Attention``'s Q: 4-D ``[B, H, Sq, D]`` or 3-D ``[B, Sq, H*D]``."""
    if q.shape is None:
        return None
    return {4: 2, 3: 1}.get(len(q.shape))


def expand_mask_queries(graph: ir.Graph) -> int:
    """Rewrite the masks (see the module docstring); returns how many were expanded."""
    count = 0
    for node in list(graph):
        if node.op_type != "Attention" or node.domain not in ("", "ai.onnx") or len(node.inputs) < 4:
            continue
        q, mask = node.inputs[0], node.inputs[3]
        axis = _query_axis(q) if mask is not None else None
        if axis is None or mask.shape is None or len(mask.shape) < 2 or mask.shape[-2] != 1 or q.shape[axis] == 1:
            continue
        rank = len(mask.shape)
        ones_before = ir.node("Constant", [], attributes={"value": ir.tensor([1] * (rank - 2), dtype=ir.DataType.INT64)})
        ones_after = ir.node("Constant", [], attributes={"value": ir.tensor([1], dtype=ir.DataType.INT64)})
        queries = ir.node("Shape", [q], attributes={"start": axis, "end": axis + 1})
        target = ir.node("Concat", [ones_before.outputs[0], queries.outputs[0], ones_after.outputs[0]],
                         attributes={"axis": 0})
        expand = ir.node("Expand", [mask, target.outputs[0]])
        out = expand.outputs[0]
        out.name = f"{mask.name or 'attn_mask'}_per_query_{count}"
        out.dtype = mask.dtype
        out.shape = ir.Shape([*list(mask.shape)[:-2], q.shape[axis], mask.shape[-1]])
        for new in (ones_before, ones_after, queries, target):
            new.outputs[0].dtype = ir.DataType.INT64
        for suffix, new in (("ones_before", ones_before), ("ones_after", ones_after), ("queries", queries),
                            ("target", target), ("expand", expand)):
            new.name = f"{node.name or 'attention'}_mask_{suffix}"
        graph.insert_before(node, [ones_before, ones_after, queries, target, expand])
        node.replace_input_with(3, out)
        count += 1
    return count
