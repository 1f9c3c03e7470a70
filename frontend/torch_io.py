"""Example inputs and outputs of an eager call: naming, NumPy conversion, batch edits.

Inputs are ``(args, kwargs)``; kwargs may nest dicts (diffusers'
``added_cond_kwargs``). Non-tensor leaves are constants of the call (for example
``return_dict=False``) and do not become graph inputs.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import onnx_ir as ir
import torch
from torch.utils import _pytree as pytree

Call = tuple[tuple, dict[str, Any]]


def _key_name(entry) -> str | None:
    if isinstance(entry, pytree.MappingKey):
        return str(entry.key)
    if isinstance(entry, pytree.GetAttrKey):
        return entry.name
    return None


def named_tensor_leaves(tree: Any, prefix: str = "output") -> list[tuple[str, torch.Tensor]]:
    """Tensor leaves of ``tree`` with readable, unique names.

    A leaf is named after its innermost dict key / attribute; positional leaves get
    ``{prefix}_{i}``, or ``prefix`` alone when there is a single leaf.
    """
    leaves = [(p, x) for p, x in pytree.tree_flatten_with_path(tree)[0] if isinstance(x, torch.Tensor)]
    named, used = [], set()
    for i, (path, x) in enumerate(leaves):
        name = next((n for n in map(_key_name, reversed(path)) if n), None)
        if name is None:
            name = prefix if len(leaves) == 1 else f"{prefix}_{i}"
        base, k = name, 1
        while name in used:
            name, k = f"{base}_{k}", k + 1
        used.add(name)
        named.append((name, x))
    return named


def input_leaves(call: Call) -> list[tuple[str | None, torch.Tensor]]:
    """Tensor leaves of ``(args, kwargs)`` in export order.

    The name is the innermost dict key for keyword inputs and ``None`` for
    positional ones (the exporter names those after the forward parameter).
    """
    out = []
    for path, x in pytree.tree_flatten_with_path(call)[0]:
        if isinstance(x, torch.Tensor):
            keys = [n for n in map(_key_name, path) if n]
            out.append((keys[-1] if keys else None, x))
    return out


def to_numpy(x: torch.Tensor) -> np.ndarray:
    """A CPU NumPy copy of ``x``; bfloat16 becomes ``ml_dtypes.bfloat16``."""
    x = x.detach().cpu()
    if x.dtype == torch.bfloat16:
        return x.view(torch.int16).numpy().view(ir.DataType.BFLOAT16.numpy())
    return x.numpy().copy()


def common_batch(call: Call) -> int | None:
    """Size of axis 0 shared by every tensor input of rank >= 1, else ``None``."""
    sizes = {x.shape[0] for _, x in input_leaves(call) if x.dim() >= 1}
    return sizes.pop() if len(sizes) == 1 else None


def _map_tensors(fn, call: Call) -> Call:
    return pytree.tree_map(lambda x: fn(x) if isinstance(x, torch.Tensor) and x.dim() >= 1 else x, call)


def take_batch(call: Call, n: int) -> Call:
    """The first ``n`` rows of every batched input."""
    return _map_tensors(lambda x: x[:n].clone(), call)


def double_batch(call: Call) -> Call:
    """Batch doubled: the second half differs from the first for float inputs."""

    def grow(x: torch.Tensor) -> torch.Tensor:
        other = x.flip(-1) if x.is_floating_point() and x.dim() >= 2 else x
        return torch.cat([x, other], dim=0)

    return _map_tensors(grow, call)


def batch_dynamic_shapes(module: torch.nn.Module, call: Call, dim: torch.export.Dim,
                         extra: dict[str, dict[int, Any]] | None = None) -> dict:
    """``dynamic_shapes`` for torch.export marking axis 0 of every batched input, and the
    ``extra`` axes (``{top-level input name: {axis: Dim}}``, genzip.frontend.dynamic_axes).

    torch.export wants the structure of the bound forward signature (a ``**kwargs``
    parameter holds a dict), so bind the call the same way.
    """
    args, kwargs = call
    bound = inspect.signature(module.forward).bind(*args, **kwargs)

    def spec(x):
        return {0: dim} if isinstance(x, torch.Tensor) and x.dim() >= 1 else None

    shapes = {name: pytree.tree_map(spec, value) for name, value in bound.arguments.items()}
    for name, axes in (extra or {}).items():
        if name in shapes and isinstance(shapes[name], dict) and isinstance(bound.arguments[name], torch.Tensor):
            shapes[name] = {**shapes[name], **axes}
        else:  # a **kwargs parameter holds the keyword inputs
            for param, value in bound.arguments.items():
                if isinstance(value, dict) and isinstance(value.get(name), torch.Tensor):
                    shapes[param][name] = {**shapes[param][name], **axes}
    return shapes
