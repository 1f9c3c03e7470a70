"""Turn an eager nn.Module and one example call into a verified SourceModel.

The batch axis (axis 0 of every input of rank >= 1, when they agree) is exported
dynamic. torch.export specializes size-1 dims, so a batch-1 example is traced
at batch 2. A dynamic export is verified at two batch sizes (the example's and
another); if it cannot be exported or verified, the model is exported static
and ``info["dynamic"]`` is False (a warning is logged).

Non-batch axes asked dynamic (``--dynamic-axes``, :mod:`genzip.frontend.dynamic_axes`)
go with the dynamic batch and are verified at a second size of each axis kind too; a
kind that fails is a one-line error for an explicit request and is exported static
under ``auto`` (the export is retried without it).
"""

from __future__ import annotations

import inspect
import logging
import re
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils import _pytree as pytree

from genzip.errors import GenzipError
from genzip.frontend import dynamic_axes, torch_io
from genzip.frontend.source import SourceModel
from genzip.frontend.torch_export import BATCH_DIM, EXPORT_ERRORS, Exported, export_onnx, export_or_fail, first_line
from genzip.frontend.user_inputs import Spec, UserData, calibration_samples, check_inputs
from genzip.frontend.verify import fidelity, run_onnx

logger = logging.getLogger(__name__)


def _eager(module: torch.nn.Module, call: torch_io.Call, count: int | None) -> list[tuple[str, torch.Tensor]]:
    args, kwargs = call
    with torch.no_grad():
        out = module(*args, **kwargs)
    named = torch_io.named_tensor_leaves(out)
    return named if count is None else named[:count]


def _feeds(exported: Exported, call: torch_io.Call) -> dict[str, np.ndarray]:
    feeds = {}
    leaves = torch_io.input_leaves(call)
    for name, value, (_, tensor) in zip(exported.input_names, exported.model.graph.inputs, leaves):
        array = torch_io.to_numpy(tensor)
        if value.dtype is not None:
            array = array.astype(value.dtype.numpy(), copy=False)
        feeds[name] = array
    return feeds


def _check(exported: Exported, module, call, names: Sequence[str], what: str):
    """``(fidelity dict, eager outputs by ONNX output name)`` at ``call``."""
    logger.info("checking the ONNX export of %s against eager PyTorch", what)
    expected = [torch_io.to_numpy(t) for _, t in _eager(module, call, len(names))]
    got = run_onnx(exported.model, _feeds(exported, call), what)
    fid = fidelity(got, expected, names, what)
    return fid, {v.name: e for v, e in zip(exported.model.graph.outputs, expected)}


class AxesRefused(Exception):
    """The export cannot keep these axis kinds dynamic (torch.export's or the check's reason)."""

    def __init__(self, kinds: set[str], reason: str):
        super().__init__(reason)
        self.kinds, self.reason = kinds, reason


def _check_axes(exported: Exported, module, call, names: Sequence[str], what: str, axes) -> None:
    """Each dynamic axis kind kept symbolic in the ONNX graph and checked against eager
    PyTorch at another size (one kind at a time, so a failure names its kind)."""
    lost = {a.kind for a in axes if any(exported.dynamic_axes.get(n, {}).get(i) is None for n, i in a.inputs)}
    if lost:
        raise AxesRefused(lost, "the ONNX exporter fixed it to the traced size")
    for kind in dict.fromkeys(a.kind for a in axes):
        mine = [a for a in axes if a.kind == kind]
        sizes = ", ".join(f"{a.dim} {a.other()}" for a in mine)
        try:
            _check(exported, module, dynamic_axes.resized(call, mine), names, f"{what} at {sizes}")
        except GenzipError as e:
            raise AxesRefused({kind}, f"at {sizes} it does not match PyTorch: {e.problem}") from e
        except EXPORT_ERRORS as e:  # the eager model itself refuses the other size
            raise AxesRefused({kind}, f"PyTorch cannot run it at {sizes}: {first_line(e)}") from e


def _try_dynamic(module, call, batch: int, names: Sequence[str], what: str, axes=()):
    """Dynamic-batch export (with ``axes`` dynamic too) checked at two batch sizes and at
    another size of each axis; None when the batch cannot be dynamic, :class:`AxesRefused`
    when an axis cannot."""
    trace_call = call if batch >= 2 else torch_io.double_batch(call)
    other_call = torch_io.take_batch(call, 1) if batch >= 2 else trace_call
    dims = ", ".join(a.dim for a in axes)
    logger.info("exporting %s to ONNX with a dynamic batch%s (torch.export, then the dynamo exporter)",
                what, f" and {dims}" if axes else "")
    try:
        exported = export_onnx(module, trace_call, dynamic=True, output_names=names, what=what, axes=axes)
    except (torch.onnx.OnnxExporterError, *EXPORT_ERRORS) as e:
        if axes:
            # torch.export's "Constraints violated (height, width)! For more information, ...": its first part
            reason = first_line(e).split(" For more information")[0].rstrip("!. ")
            named = dynamic_axes.named_in(e, axes)
            if not named and re.search(rf"\b{BATCH_DIM}\b", reason):
                reason = f"its batch axis cannot be dynamic ({reason}), and dynamic sizes go with a dynamic batch"
            raise AxesRefused(named or {a.kind for a in axes}, reason) from e
        logger.warning("%s: dynamic-batch export failed (%s); exporting with a static batch", what, first_line(e))
        return None
    if not any(0 in d for d in exported.dynamic_axes.values()):
        if axes:
            raise AxesRefused({a.kind for a in axes}, "the exporter kept the batch static")
        logger.warning("%s: the exporter kept the batch static", what)
        return None
    if axes:
        _check_axes(exported, module, trace_call, names, what, axes)
    try:
        _check(exported, module, other_call, names, f"{what} at batch {1 if batch >= 2 else 2 * batch}")
        return exported, _check(exported, module, call, names, what)
    except GenzipError as e:
        if axes:
            raise AxesRefused({a.kind for a in axes}, f"it does not match PyTorch: {e.problem}") from e
        logger.warning("%s: dynamic-batch export failed verification (%s); exporting with a static batch", what, e)
        return None


def _export_with_axes(module, call, batch: int, names: Sequence[str], what: str, request, axes):
    """:func:`_try_dynamic` with ``axes``; an explicit request that fails is a one-line error,
    ``auto`` drops the axes that failed and tries again (the rest stays dynamic)."""
    while True:
        try:
            return _try_dynamic(module, call, batch, names, what, axes), axes
        except AxesRefused as refused:
            kinds = [k for k in dynamic_axes.KINDS if k in refused.kinds]
            if request.explicit:
                raise GenzipError(
                    f"--dynamic-axes {','.join(kinds)}: {what} cannot keep its {dynamic_axes.describe(kinds)} "
                    f"dynamic: {refused.reason}",
                    f"drop {','.join(kinds)} from --dynamic-axes (export {'them' if len(kinds) > 1 else 'it'} "
                    "static), or use --dynamic-axes auto",
                ) from refused
            logger.info("%s: keeping the %s static (%s)", what, dynamic_axes.describe(kinds), refused.reason)
            axes = [a for a in axes if a.kind not in refused.kinds]


def call_input_names(module: torch.nn.Module, call: torch_io.Call) -> list[str]:
    """The graph input name of each tensor leaf of ``call`` (keyword inputs: their key;
    positional ones: the forward parameter's name, as the exporter names them)."""
    args, kwargs = call
    try:
        params = [p.name for p in inspect.signature(module.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    names = []
    for i, arg in enumerate(args):
        base = params[i] if i < len(params) else f"input_{i}"
        count = len(torch_io.input_leaves(((arg,), {})))
        names += [base] if count == 1 else [f"{base}_{j}" for j in range(count)]
    return names + [name or f"input_{k}" for k, (name, _) in enumerate(torch_io.input_leaves(((), kwargs)))]


def call_specs(module: torch.nn.Module, call: torch_io.Call, *, free: bool = False) -> list[Spec]:
    """Input specs of ``call``: axis 0 free (the batch is exported dynamic), other dims as
    traced; ``free``: every dim free (what a replacement example call may change)."""
    specs = []
    for name, (_, tensor) in zip(call_input_names(module, call), torch_io.input_leaves(call)):
        shape = tuple(None if free or axis == 0 else d for axis, d in enumerate(tensor.shape))
        specs.append((name, torch_io.to_numpy(tensor[:0] if tensor.dim() else tensor).dtype, shape))
    return specs


def with_user_inputs(module: torch.nn.Module, call: torch_io.Call, feeds: dict[str, np.ndarray]) -> torch_io.Call:
    """``call`` with its tensor leaves replaced by the user's arrays (checked by name,
    dtype and rank first): the export then traces, and fidelity is measured, on them."""
    feeds = check_inputs(call_specs(module, call, free=True), feeds)
    names = iter(call_input_names(module, call))
    flat, tree = pytree.tree_flatten(call)
    flat = [torch.from_numpy(np.ascontiguousarray(feeds[next(names)])) if isinstance(x, torch.Tensor) else x
            for x in flat]
    return pytree.tree_unflatten(flat, tree)


def _user_calibration(module, call, user: UserData | None) -> list[dict[str, np.ndarray]] | None:
    if user is None or user.calib is None:
        return None
    return calibration_samples(call_specs(module, call), user.calib)


def source_from_torch(
    module: torch.nn.Module,
    call: torch_io.Call,
    *,
    source: str,
    kind: str,
    output_names: Sequence[str] | None = None,
    info: dict[str, Any] | None = None,
    dynamic: bool = True,
    user: UserData | None = None,
    axes: dynamic_axes.DynamicAxes | None = None,
) -> SourceModel:
    """Export, verify and wrap ``module(*args, **kwargs)``.

    ``output_names`` keeps and names the first outputs (``None``: keep all, named
    after the output structure). Adds to ``info``: ``module`` (the eager module),
    ``reference_outputs`` (eager outputs on ``example_inputs``, by ONNX output
    name), ``dynamic`` (bool), ``dynamic_axes``, ``export_s``, ``removed_noops``.

    ``user`` (``--inputs`` / ``--calib-data``) is checked before the export: its example
    inputs replace ``call``, and its calibration set lands in ``info["calibration"]``.

    ``axes`` (``--dynamic-axes``) asks for non-batch axes dynamic too; those kept land in
    ``info["dynamic_sizes"]`` (dim name -> range, :meth:`dynamic_axes.Axis.record`).
    """
    module.eval()
    what = f"'{source}'"
    if user is not None and user.inputs is not None:
        call = with_user_inputs(module, call, user.inputs)
    calibration = _user_calibration(module, call, user)
    if output_names is None:
        output_names = [n for n, _ in _eager(module, call, None)]
    if not output_names:
        raise GenzipError(f"{what} returns no tensor", "return a tensor (or a tuple/dict of tensors) from forward")
    start = time.perf_counter()
    batch = torch_io.common_batch(call)
    if dynamic and not batch:
        logger.info("%s: inputs share no batch axis 0; exporting with static shapes", what)
    request = axes or dynamic_axes.NONE
    planned = dynamic_axes.plan(request, module, {k: tuple(v.shape) for k, v in call[1].items()
                                                  if isinstance(v, torch.Tensor)}, what)
    if planned and not (dynamic and batch):
        if request.explicit:
            raise GenzipError(f"--dynamic-axes needs {what} exported with a dynamic batch, and its inputs share no "
                              "batch axis 0", "drop --dynamic-axes")
        planned = []
    kept: list[dynamic_axes.Axis] = []
    if planned:
        result, kept = _export_with_axes(module, call, batch, output_names, what, request, planned)
    else:
        result = _try_dynamic(module, call, batch, output_names, what) if dynamic and batch else None
    if result is None:
        logger.info("exporting %s to ONNX with static shapes (torch.export, then the dynamo exporter)", what)
        exported = export_or_fail(module, call, dynamic=False, output_names=output_names, what=what)
        result, kept = (exported, _check(exported, module, call, output_names, what)), []
    exported, (fid, reference) = result
    elapsed = time.perf_counter() - start
    logger.info(
        "exported %s in %.1f s (dynamic batch: %s, cosine %.6f)",
        what, elapsed, bool(exported.dynamic_axes), fid["cosine"],
    )
    info = dict(info or {})
    if calibration is not None:
        # The exporter names the graph inputs; samples follow them by position.
        rename = dict(zip(call_input_names(module, call), exported.input_names))
        info["calibration"] = [{rename.get(k, k): v for k, v in s.items()} for s in calibration]
    info.update(
        module=module,
        reference_outputs=reference,
        dynamic=bool(exported.dynamic_axes),
        dynamic_axes=exported.dynamic_axes,
        dynamic_sizes={a.dim: a.record() for a in kept},
        export_s=round(elapsed, 2),
        removed_noops=exported.removed_noops,
    )
    return SourceModel(
        model=exported.model,
        source=source,
        kind=kind,
        example_inputs=_feeds(exported, call),
        fidelity=fid,
        info=info,
    )
