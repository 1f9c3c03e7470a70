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


# Initializers above this many elements leave the checked proto of a large model.
_CHECKED_WEIGHT_LIMIT = 1024


def _checkable_proto(model: ir.Model) -> onnx.ModelProto:
    """``model`` as the checker and shape inference see it.

    A large model (``genzip.ort_session.is_large``: weights past the in-memory limit or in
    external files) is serialized with its big initializers as graph inputs of the same
    dtype and shape: checking needs their types, not their bytes, a proto holding the bytes
    could pass protobuf's 2 GB limit, and external references would be resolved against
    the working directory. Small initializers (shape constants, which data propagation
    reads) stay. The model is left as it came.
    """
    from genzip.ort_session import is_large

    if not is_large(model):
        return ir.to_proto(model)
    graph = model.graph
    big = [v for v in graph.initializers.values() if v.const_value is not None
           and (isinstance(v.const_value, ir.ExternalTensor) or v.const_value.size > _CHECKED_WEIGHT_LIMIT)]
    inputs = len(graph.inputs)
    for value in big:
        graph.initializers.pop(value.name)
        if value.shape is None or value.dtype is None:
            value.shape, value.dtype = ir.Shape(list(value.const_value.shape)), value.const_value.dtype
    graph.inputs.extend(big)
    try:
        return ir.to_proto(model)
    finally:
        del graph.inputs[inputs:]
        for value in big:
            graph.register_initializer(value)


def check_full(model: ir.Model) -> None:
    check_structure(model)
    proto = _checkable_proto(model)
    try:
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
