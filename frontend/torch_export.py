"""nn.Module + example call -> onnx_ir.Model via torch.export and the dynamo exporter.

Pipeline: ``torch.export.export`` (batch axis dynamic when asked) -> FX no-op
cleanup (:mod:`genzip.frontend.fx_cleanup`) -> ``torch.onnx.export(ep,
dynamo=True, opset_version=23)``, whose ``.model`` is used as is (SDPA becomes
one ONNX ``Attention`` node; node metadata ``pkg.torch.onnx.name_scopes`` /
``namespace`` keep the torch module path). Graph inputs are named after the
keyword inputs, outputs after ``output_names``, the batch dim ``batch``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import onnx_ir as ir
import torch

from genzip.errors import GenzipError
from genzip.frontend import onnx_names
from genzip.frontend.attn_mask_queries import expand_mask_queries
from genzip.frontend.dynamic_axes import export_dims
from genzip.frontend.fx_cleanup import remove_noop_ops
from genzip.frontend.rotary_batch import expand_rotary_batch
from genzip.frontend.torch_io import Call, batch_dynamic_shapes, input_leaves

logger = logging.getLogger(__name__)

OPSET = 23
BATCH_DIM = "batch"

# What torch.export / the ONNX exporter raise for a model they cannot handle.
EXPORT_ERRORS = (RuntimeError, AssertionError, ValueError, TypeError, NotImplementedError)


def moe_routing_error(module: torch.nn.Module, error: BaseException, what: str) -> GenzipError | None:
    """A one-line error naming the mixture-of-experts module whose routing ``error`` was
    raised in (a frame of its ``forward``), or None when the failure was elsewhere."""
    names = {id(m): n for n, m in module.named_modules()}
    tb, culprit = error.__traceback__, None
    while tb is not None:  # innermost MoE frame wins
        owner = tb.tb_frame.f_locals.get("self")
        if isinstance(owner, torch.nn.Module) and id(owner) in names and any(
                word in type(owner).__name__.lower() for word in ("moe", "expert")):
            culprit = owner
        tb = tb.tb_next
    if culprit is None:
        return None
    return GenzipError(
        f"cannot export the expert routing of '{names[id(culprit)] or type(culprit).__name__}' "
        f"({type(culprit).__name__}) in {what}: {first_line(error)}",
        "route by gathering each token's top-k expert weights (transformers: "
        "model.set_experts_implementation('batched_mm')), or export it to ONNX yourself",
    )


@dataclasses.dataclass
class Exported:
    model: ir.Model
    input_names: list[str]  # ONNX graph input for each tensor leaf of the call, in order
    dynamic_axes: dict[str, dict[int, str]]
    removed_noops: dict[str, int]


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporter's per-export 'torchvision is not installed' warnings."""
    log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def export_onnx(
    module: torch.nn.Module,
    call: Call,
    *,
    dynamic: bool,
    output_names: Sequence[str],
    what: str,
    axes: Sequence[Any] = (),
) -> Exported:
    """Export ``module(*args, **kwargs)``; ``output_names`` name (and keep) the first outputs.

    ``axes`` (:class:`genzip.frontend.dynamic_axes.Axis`, with ``dynamic``) are exported
    dynamic too, their ONNX dims named after them; ``dynamic_axes`` of the result lists the
    ones the ONNX graph kept symbolic. Raises the exporter's own error (one of
    ``EXPORT_ERRORS``) so the caller can retry without dynamic shapes; see
    :func:`export_or_fail` for the user-facing one.
    """
    args, kwargs = call
    extra = export_dims(axes) if dynamic and axes else None
    dynamic_shapes = batch_dynamic_shapes(module, call, torch.export.Dim(BATCH_DIM, min=1), extra) \
        if dynamic else None
    with torch.no_grad(), _quiet_exporter():
        ep = torch.export.export(module, args, kwargs, dynamic_shapes=dynamic_shapes, strict=False)
        removed = remove_noop_ops(ep)
        program = torch.onnx.export(ep, dynamo=True, opset_version=OPSET, verbose=False)
    model = program.model
    graph = model.graph

    leaves = input_leaves(call)
    if len(leaves) != len(graph.inputs):
        raise RuntimeError(f"{what}: {len(leaves)} tensor inputs but the ONNX graph has {len(graph.inputs)}")
    for (name, tensor), value in zip(leaves, graph.inputs):
        if value.shape is not None and value.shape.rank() != tensor.dim():
            raise RuntimeError(f"{what}: ONNX input '{value.name}' does not match the example inputs")
        if name:
            onnx_names.rename_value(graph, value, name)

    expand_mask_queries(graph)  # ORT's Attention needs the mask's query axis (diffusers' cross-attention masks)
    if dynamic and axes:
        expand_rotary_batch(graph)  # a dynamic sequence leaves RotaryEmbedding caches at batch 1
    onnx_names.keep_outputs(model, len(output_names))
    onnx_names.name_outputs(graph, output_names)

    dynamic_axes: dict[str, dict[int, str]] = {}
    batch_syms = {v.shape[0].value for v in graph.inputs if v.shape and isinstance(v.shape[0], ir.SymbolicDim)}
    for sym in batch_syms:
        if sym:
            onnx_names.name_symbolic_dim(graph, sym, BATCH_DIM)
    for value in graph.inputs:
        if value.shape and isinstance(value.shape[0], ir.SymbolicDim):
            dynamic_axes[value.name] = {0: BATCH_DIM}
    by_name, named = {v.name: v for v in graph.inputs}, set()
    for a in axes if dynamic else ():
        for name, axis in a.inputs:
            dim = by_name[name].shape[axis] if name in by_name and by_name[name].shape is not None else None
            if not isinstance(dim, ir.SymbolicDim) or not dim.value:
                continue  # the exporter fixed it: the caller refuses or drops the axis
            if dim.value not in named:  # else torch.export tied it to an axis named already (h = w)
                onnx_names.name_symbolic_dim(graph, dim.value, a.dim)
                named.add(a.dim)
            dynamic_axes.setdefault(name, {})[axis] = by_name[name].shape[axis].value
    return Exported(model, [v.name for v in graph.inputs], dynamic_axes, removed)


def export_or_fail(
    module: torch.nn.Module, call: Call, *, dynamic: bool, output_names: Sequence[str], what: str
) -> Exported:
    """:func:`export_onnx`, turning exporter failures into a GenzipError."""
    try:
        return export_onnx(module, call, dynamic=dynamic, output_names=output_names, what=what)
    except torch.onnx.OnnxExporterError as e:
        raise GenzipError(
            f"the ONNX exporter could not translate {what}: {first_line(e)}",
            "export it to ONNX yourself and pass the .onnx file",
        ) from e
    except EXPORT_ERRORS as e:
        routing = moe_routing_error(module, e, what)
        if routing is not None:
            raise routing from e
        raise GenzipError(
            f"torch.export could not trace {what}: {first_line(e)}",
            "make the model's forward torch.export-compatible, or export it to ONNX yourself "
            "and pass the .onnx file",
        ) from e
