"""Read the torch module path the dynamo exporter stores on each ONNX node.

The exporter writes ``pkg.torch.onnx.name_scopes`` (a Python list literal such
as ``['', 'transformer_blocks.0', 'transformer_blocks.0.attn1',
'scaled_dot_product_attention']``: the enclosing module paths, then the FX op
name) and ``pkg.torch.onnx.class_hierarchy`` (the matching classes); its older
form is ``namespace`` (``": pkg.Root/blocks.0: pkg.Block/.../sdpa: aten.sdpa"``).
Passes select layers with a regex over :func:`module_path`; attention
classification reads :func:`enclosing_module` and :func:`module_classes`. The one
place genzip parses these keys.
"""

from __future__ import annotations

import ast

import onnx_ir as ir

from genzip.metadata import NAMESPACE_KEY
from genzip.metadata import TORCH_CLASS_HIERARCHY_KEY as CLASS_HIERARCHY_KEY
from genzip.metadata import TORCH_NAME_SCOPES_KEY as NAME_SCOPES_KEY


def _scopes(node: ir.Node, key: str) -> list[str] | None:
    raw = node.metadata_props.get(key)
    if not raw:
        return None
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return None
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else None


def module_path(node: ir.Node) -> str | None:
    """Dotted path of the innermost torch module that produced ``node`` ('' = the
    root module), or ``None`` when the node carries no exporter metadata."""
    scopes = _scopes(node, NAME_SCOPES_KEY)
    if not scopes:
        return None
    return scopes[-2] if len(scopes) >= 2 else ""


def module_class(node: ir.Node) -> str | None:
    """Qualified class name of that module (e.g. ``diffusers...Attention``), or ``None``."""
    classes = _scopes(node, CLASS_HIERARCHY_KEY)
    if not classes or len(classes) < 2:
        return None
    return classes[-2]


def module_classes(node: ir.Node) -> list[str] | None:
    """The whole class hierarchy the exporter recorded (outermost first), or ``None``."""
    return _scopes(node, CLASS_HIERARCHY_KEY)


def enclosing_module(node: ir.Node) -> str | None:
    """The innermost non-root module path, from the name scopes or, for older exports,
    the ``namespace`` key; ``None`` when neither names one."""
    path = module_path(node)
    if path:
        return path
    raw = node.metadata_props.get(NAMESPACE_KEY)
    if raw:
        # ": pkg.Root/blocks.0: pkg.Block/blocks.0.attn: pkg.Attn/sdpa: aten.sdpa" -> blocks.0.attn
        modules = [part.split(":", 1)[0].strip() for part in raw.split("/")[:-1]]
        modules = [m for m in modules if m]
        if modules:
            return modules[-1]
    return None
