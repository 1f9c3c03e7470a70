"""Read the torch module path the dynamo exporter stores on each ONNX node.

The exporter writes ``pkg.torch.onnx.name_scopes`` (a Python list literal such
as ``['', 'transformer_blocks.0', 'transformer_blocks.0.attn1',
'scaled_dot_product_attention']``: the enclosing module paths, then the FX op
name) and ``pkg.torch.onnx.class_hierarchy`` (the matching classes). Passes
select layers with a regex over :func:`module_path`.
"""

from __future__ import annotations

import ast

import onnx_ir as ir

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
