"""Remove provable no-op ops from an ExportedProgram before ONNX translation.

Why: models call shape ops that do nothing for the traced shapes (diffusers'
PixArt runs ``hidden_states.squeeze(1)`` on a dimension of 256). PyTorch treats
``squeeze`` of a non-1 dim as a no-op, but the ONNX exporter turns it into
``Squeeze(axes=[1])``, which onnxruntime rejects at load time ("Dimension of
input 1 must be 1 instead of 256"). Removing every op we can *prove* is an
identity from the FX ``meta['val']`` shapes fixes that class of bug in general.

An op is removed (its uses redirected to its input) when:

* ``squeeze`` keeps the rank (every squeezed dim is statically not 1);
* ``view``/``reshape``/``expand``/``flatten``/``slice`` (step 1) give the
  statically identical shape; ``permute``/``transpose`` keep the axis order;
* ``alias``/``detach``, ``dropout`` in eval mode (or ``p == 0``);
* ``clone``/``contiguous``/``to``/``_to_copy``/``type_as`` keep dtype, shape and
  device -- only when the graph has no in-place op, since a copy then matters.
"""

from __future__ import annotations

import logging
from collections import Counter

import torch
from torch.export import ExportedProgram
from torch.export.graph_signature import TensorArgument
from torch.fx.experimental.symbolic_shapes import statically_known_true

logger = logging.getLogger(__name__)

aten = torch.ops.aten

_SQUEEZES = {aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default}
_SAME_SHAPE_VIEWS = {
    aten.view.default,
    aten.reshape.default,
    aten._unsafe_view.default,
    aten.expand.default,
    aten.flatten.using_ints,
    aten.alias.default,
    aten.detach.default,
}
_COPIES = {
    aten.clone.default,
    aten.contiguous.default,
    aten._to_copy.default,
    aten.to.dtype,
    aten.to.dtype_layout,
    aten.to.device,
    aten.to.other,
    aten.type_as.default,
}


def _val(node) -> torch.Tensor | None:
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return val if isinstance(val, torch.Tensor) else None


def _same_shape(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dim() != b.dim():
        return False
    return all(statically_known_true(x == y) for x, y in zip(a.shape, b.shape))


def _is_identity_perm(node, ndim: int) -> bool:
    if node.target is aten.permute.default:
        dims = [d % ndim for d in node.args[1]] if ndim else []
        return dims == list(range(ndim))
    if len(node.args) < 3:
        return False
    d0, d1 = node.args[1], node.args[2]
    return ndim == 0 or d0 % ndim == d1 % ndim


def _is_noop(node, allow_copies: bool) -> bool:
    src, out = _val(node.args[0]) if node.args else None, _val(node)
    if src is None or out is None or src.dtype != out.dtype:
        return False
    target = node.target
    if target in _SQUEEZES:
        return src.dim() == out.dim()
    if not _same_shape(src, out):
        return False
    if target in _SAME_SHAPE_VIEWS:
        return True
    if target is aten.slice.Tensor:
        step = node.args[4] if len(node.args) > 4 else node.kwargs.get("step", 1)
        return step == 1
    if target in (aten.permute.default, aten.transpose.int):
        return _is_identity_perm(node, src.dim())
    if target is aten.dropout.default:
        p = node.args[1] if len(node.args) > 1 else node.kwargs.get("p")
        train = node.args[2] if len(node.args) > 2 else node.kwargs.get("train")
        return train is False or p == 0
    if target in _COPIES:
        return allow_copies and src.device == out.device
    return False


def _has_mutation(graph: torch.fx.Graph) -> bool:
    for node in graph.nodes:
        schema = getattr(node.target, "_schema", None)
        if node.op == "call_function" and schema is not None and schema.is_mutable:
            return True
    return False


def remove_noop_ops(ep: ExportedProgram) -> dict[str, int]:
    """Remove provable no-op ops from ``ep`` in place; return counts per op."""
    graph = ep.graph_module.graph
    allow_copies = not _has_mutation(graph)
    output_node = graph.output_node()
    removed: Counter[str] = Counter()
    for node in list(graph.nodes):
        if node.op != "call_function" or not _is_noop(node, allow_copies):
            continue
        src = node.args[0]
        feeds_output = output_node in node.users
        if feeds_output and src.op == "placeholder":
            continue  # an output may not become a graph input
        node.replace_all_uses_with(src)
        if feeds_output:
            for spec in ep.graph_signature.output_specs:
                if isinstance(spec.arg, TensorArgument) and spec.arg.name == node.name:
                    spec.arg = TensorArgument(name=src.name)
        graph.erase_node(node)
        removed[str(node.target)] += 1
    if removed:
        graph.lint()
        ep.graph_module.recompile()
        logger.info("fx cleanup removed no-op ops: %s", dict(removed))
    return dict(removed)
