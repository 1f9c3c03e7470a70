"""Give every exported ``RotaryEmbedding``'s cos/sin caches the batch of its input.

Without ``position_ids``, ONNX's ``RotaryEmbedding`` takes ``cos_cache``/``sin_cache`` of
shape ``[batch, seq, rotary_dim / 2]``. A transformers causal LM computes them from
``position_ids = arange(seq)[None]``, so with a dynamic sequence length (``--dynamic-axes
seq``) the exporter's fused node reads caches of batch 1 whatever the input's batch, and
ONNX Runtime refuses a batch of 2 ("Inputs 'cos_cache' and 'sin_cache' are expected to
have the same shape as input 'x', got 1 and 16").

Invariant after :func:`expand_rotary_batch`: every default-domain ``RotaryEmbedding``
node without ``position_ids`` whose cache is 3-D (or of unknown shape) reads ``Expand(cache, [B, 1, 1])``
instead, ``B`` taken from ``X`` at run time (the batch stays dynamic); the values are the
same caches repeated over the batch, as the broadcast in PyTorch.
"""

from __future__ import annotations

import onnx_ir as ir


def _int64(node: ir.Node) -> ir.Node:
    node.outputs[0].dtype = ir.DataType.INT64
    return node


def expand_rotary_batch(graph: ir.Graph) -> int:
    """Rewrite the caches (see the module docstring); returns how many nodes now read expanded ones."""
    count = 0
    for node in list(graph):
        if node.op_type != "RotaryEmbedding" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 3:
            continue
        x, cos, sin = node.inputs
        if x is None or cos is None or sin is None or (cos.shape is not None and len(cos.shape) != 3):
            continue  # (without position_ids the spec wants 3-D caches; the exporter leaves them unshaped)
        prefix = node.name or "rotary"
        batch = _int64(ir.node("Shape", [x], attributes={"start": 0, "end": 1}, name=f"{prefix}_batch"))
        ones = _int64(ir.node("Constant", [], attributes={"value": ir.tensor([1, 1], dtype=ir.DataType.INT64)},
                              name=f"{prefix}_ones"))
        target = _int64(ir.node("Concat", [batch.outputs[0], ones.outputs[0]], attributes={"axis": 0},
                                name=f"{prefix}_cache_shape"))
        new = [batch, ones, target]
        for index, cache in ((1, cos), (2, sin)):
            expand = ir.node("Expand", [cache, target.outputs[0]], name=f"{prefix}_expand_{index}")
            out = expand.outputs[0]
            out.name = f"{cache.name or 'rotary_cache'}_per_batch_{count}_{index}"
            out.dtype = cache.dtype or x.dtype  # the spec gives X and the caches one type
            if cache.shape is not None and x.shape is not None:
                out.shape = ir.Shape([x.shape[0], *list(cache.shape)[1:]])
            new.append(expand)
            node.replace_input_with(index, out)
        graph.insert_before(node, new)
        count += 1
    return count
