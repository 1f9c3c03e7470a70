"""Structural checks run after every pass that changed the graph.

``check_structure`` (cheap, always on): topological order, no dangling uses,
every node's domain imported at one version. ``check_full`` adds the ONNX checker
and strict shape inference on the serialized model.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir


class VerificationError(RuntimeError):
    """The IR broke an invariant: a bug in the pass that ran last."""


def _check_graph(graph: ir.Graph | ir.Function, opsets: dict[str, int], where: str, outer: set) -> None:
    available: set[int] = set(outer)
    inputs = list(graph.inputs)
    initializers = list(getattr(graph, "initializers", {}).values())
    for v in inputs + initializers:
        available.add(id(v))
    for node in graph:
        domain = node.domain or ""
        if domain not in opsets and domain != "ai.onnx":
            raise VerificationError(f"{where}: node '{node.name}' uses domain '{domain}' with no opset import")
        for v in node.inputs:
            if v is None:
                continue
            if id(v) not in available:
                producer = v.producer()
                # A producer removed from the graph (graph.remove(..., safe=False)) is dangling too.
                if (producer is None or producer.graph is None) and v.const_value is None:
                    raise VerificationError(f"{where}: node '{node.name}' uses '{v.name}' which nothing defines")
                raise VerificationError(
                    f"{where}: node '{node.name}' uses '{v.name}' before its producer "
                    f"'{producer.name if producer else '?'}' (not topologically sorted)"
                )
            if not any(user is node for user, _ in v.uses()):
                raise VerificationError(f"{where}: '{v.name}' does not list node '{node.name}' among its uses")
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                _check_graph(attr.value, opsets, f"{where}/{node.name}", available)
            elif attr.type == ir.AttributeType.GRAPHS:
                for g in attr.value:
                    _check_graph(g, opsets, f"{where}/{node.name}", available)
        for out in node.outputs:
            available.add(id(out))
    for out in graph.outputs:
        if id(out) not in available:
            raise VerificationError(f"{where}: graph output '{out.name}' is not produced")


def check_structure(model: ir.Model) -> None:
    opsets = dict(model.opset_imports)
    _check_graph(model.graph, opsets, "graph", set())
    for func in model.functions.values():
        fopsets = dict(opsets)
        fopsets.update(func.opset_imports)
        for domain, version in func.opset_imports.items():
            if domain in opsets and opsets[domain] != version:
                raise VerificationError(
                    f"function {func.identifier()}: imports {domain or 'ai.onnx'} v{version} "
                    f"but the model imports v{opsets[domain]}"
                )
        _check_graph(func, fopsets, f"function {func.name}", set())


def check_full(model: ir.Model) -> None:
    check_structure(model)
    proto = ir.to_proto(model)
    try:
        # Large models: the checker takes a path; ours stay under 2 GB in memory here.
        onnx.checker.check_model(proto, full_check=False)
        onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise VerificationError(str(e).strip().splitlines()[0]) from e


def verify(model: ir.Model, level: str) -> None:
    if level == "full":
        check_full(model)
    elif level == "structure":
        check_structure(model)
    elif level != "none":
        raise ValueError(f"unknown verify level {level!r}")
