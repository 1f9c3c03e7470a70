"""``package.module:function`` references: user code returning ``(nn.Module, example_inputs)``.

``example_inputs`` is a tuple/list of tensors (positional) or a dict name ->
tensor (keyword; non-tensor values pass through as constants). If the function
takes ``seed`` / ``batch`` parameters, ``load_model``'s values are passed; a
``batch`` request to a function without that parameter is an error. The export sizes
(``--text-len``, ``--height``, ``--width``, ``--seq-len``) are passed the same way, as
``text_len``, ``height``, ``width``, ``seq_len`` keywords; one the function does not
take is an error naming the parameter to add.
"""

from __future__ import annotations

import importlib
import inspect
import re
from typing import Any

from genzip.errors import GenzipError, did_you_mean
from genzip.frontend.source import SourceModel

CALLABLE_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_FIX_RETURN = "return (torch.nn.Module, tuple of tensors) or (torch.nn.Module, dict name -> tensor)"


def is_callable_ref(ref: str) -> bool:
    return bool(CALLABLE_REF.match(ref))


def _import(module_name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise GenzipError(
                f"cannot import module '{module_name}'",
                "check the name and that its folder is on PYTHONPATH (or the package is installed)",
            ) from e
        raise GenzipError(
            f"importing '{module_name}' failed: {e}", f"install the missing package '{e.name}'"
        ) from e
    except ImportError as e:
        raise GenzipError(f"importing '{module_name}' failed: {e}", "fix the module's imports") from e


def _resolve(ref: str):
    module_name, func_name = ref.split(":")
    module = _import(module_name)
    func = getattr(module, func_name, None)
    if func is None:
        names = [n for n in dir(module) if not n.startswith("_")]
        raise GenzipError(
            f"module '{module_name}' has no function '{func_name}'{did_you_mean(func_name, names)}",
            f"define {func_name}() in {module_name} or fix the reference",
        )
    if not callable(func):
        raise GenzipError(f"'{ref}' is not callable", "point the reference at a function")
    return func


def _call(func, ref: str, seed: int, batch: int | None, sizes=None):
    params = inspect.signature(func).parameters
    kwargs: dict[str, Any] = {}
    for name, value in (sizes.record() if sizes is not None else {}).items():
        if name not in params:
            flag = "--" + name.replace("_", "-")
            raise GenzipError(f"'{ref}' takes no '{name}' parameter, so {flag} {value} cannot be applied",
                              f"add a {name} parameter to the function or drop {flag}")
        kwargs[name] = value
    if "seed" in params:
        kwargs["seed"] = seed
    if "batch" in params:
        if batch is not None:
            kwargs["batch"] = batch
    elif batch is not None:
        raise GenzipError(
            f"'{ref}' takes no 'batch' parameter, so batch={batch} cannot be applied",
            "add a batch parameter to the function or omit batch",
        )
    return func(**kwargs)


def as_module_call(result, ref: str):
    import torch

    if not (isinstance(result, (tuple, list)) and len(result) == 2):
        raise GenzipError(
            f"'{ref}' returned {type(result).__name__}, not a (module, example_inputs) pair", _FIX_RETURN
        )
    module, inputs = result
    if not isinstance(module, torch.nn.Module):
        raise GenzipError(
            f"'{ref}' returned {type(module).__name__} as the module, not a torch.nn.Module", _FIX_RETURN
        )
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    if isinstance(inputs, (tuple, list)):
        if not inputs or not all(isinstance(x, torch.Tensor) for x in inputs):
            raise GenzipError(f"'{ref}' example inputs must all be tensors", _FIX_RETURN)
        return module, (tuple(inputs), {})
    if isinstance(inputs, dict):
        if not any(isinstance(x, torch.Tensor) for x in inputs.values()):
            raise GenzipError(f"'{ref}' example inputs contain no tensor", _FIX_RETURN)
        return module, ((), dict(inputs))
    raise GenzipError(f"'{ref}' returned example inputs of type {type(inputs).__name__}", _FIX_RETURN)


def load_callable(ref: str, *, seed: int, batch: int | None, user=None, sizes=None, axes=None) -> SourceModel:
    """Import and call the function, then export and verify the module it returns."""
    from genzip.frontend.from_torch import source_from_torch
    from genzip.frontend.torch_io import common_batch

    module, call = as_module_call(_call(_resolve(ref), ref, seed, batch, sizes), ref)
    info = {"family": None, "class": type(module).__name__, "batch": common_batch(call), "seed": seed}
    if sizes is not None and sizes.record():
        info["export_sizes"] = sizes.record()
    return source_from_torch(module, call, source=ref, kind="callable", info=info, user=user, axes=axes)
