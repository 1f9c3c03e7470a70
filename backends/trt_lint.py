"""TensorRT legality lint over an ``onnx_ir.Model``, without TensorRT installed.

``lint_model`` returns one ``Finding`` per problem the targeted TensorRT ONNX parser
(tables in ``trt_support``) or TensorRT's explicit-quantization rules
(``trt_qdq``) would reject: operators without an importer, per-operator
restrictions, Q/DQ layout, unsupported dtypes, graph inputs of unknown rank, and
an opset outside the parser's range.

Invariants: the lint never mutates the model; every finding names a node (or a
value), the rule and a fix; the same rule (``attention_problems``) decides both
what the lint reports for ``Attention`` and what ``legalize-trt`` rewrites.
What the parser will see is modelled as ``backends.trt_build`` prepares it:
``genzip`` plugin nodes are opaque plugin layers (their function bodies are not
linted) from the first parser that maps nodes to Python plugins (10.6); any other
node that calls a model-local function is inlined by the parser, so its body is
linted instead of the call.
"""

from __future__ import annotations

import onnx_ir as ir

from genzip.backends.trt_qdq import qdq_findings
from genzip.passes.lowering import _trt_support as sup
from genzip.passes.lowering._trt_rules import (
    Finding,
    attention_problems,
    attn_graphs,
    int_attr,
    is_const,
    is_plugin_node,
    live,
    node_label,
)

_DEFAULT_DOMAINS = ("", "ai.onnx")


def _restriction(node: ir.Node) -> str | None:
    """The first documented per-operator restriction ``node`` violates (operators.md, 10.15)."""
    op = node.op_type
    if op == "TopK" and int_attr(node, "sorted", 1) != 1:
        return "TopK needs sorted=1"
    if op == "ScatterND" and node.attributes.get("reduction") and node.attributes["reduction"].as_string() != "none":
        return "ScatterND supports reduction='none' only"
    if op in ("LayerNormalization", "MaxPool") and any(live(o) for o in node.outputs[1:]):
        return f"only the first output of {op} is supported"
    if op == "Constant" and {"sparse_value", "value_string", "value_strings"} & set(node.attributes):
        return "sparse and string Constant values are unsupported"
    if op == "Resize" and int_attr(node, "antialias", 0):
        return "Resize antialiasing is unsupported"
    if op == "LSTM" and (int_attr(node, "input_forget", 0) or int_attr(node, "layout", 0)):
        return "LSTM needs input_forget=0 and layout=0"
    if op.startswith("Reduce") and len(node.inputs) > 1 and node.inputs[1] is not None and not is_const(node.inputs[1]):
        return f"{op} axes must be an initializer"
    if op in ("AveragePool", "MaxPool", "LpPool") and any(d != 1 for d in (node.attributes.get("dilations").as_ints()
                                                                         if "dilations" in node.attributes else ())):
        return f"{op} dilations must be all ones"
    if op == "Dropout" and len(node.inputs) > 2 and node.inputs[2] is not None and not is_const(node.inputs[2]):
        return "Dropout training_mode must be an initializer that is False"
    return None


def _op_findings(model: ir.Model, version: sup.Version) -> list[Finding]:
    v = sup.version_str(version)
    ops = sup.supported_ops(version)
    functions = {(f.domain, f.name, f.overload) for f in model.functions.values()}
    legalize = f"run the legalize-trt pass (--passes ...,legalize-trt{{trt-version={v}}})"
    found = []
    for graph in attn_graphs(model, version):
        for node in graph:
            label, op = node_label(node), node.op_type
            if node.domain not in _DEFAULT_DOMAINS:
                if is_plugin_node(node, version) or (node.domain, op, node.overload) in functions:
                    continue
                fix = (f"target TensorRT >= {sup.version_str(sup.PLUGIN_NODES_FROM)} for genzip plugins"
                       if node.domain == sup.PLUGIN_DOMAIN and op in sup.PLUGIN_OPS
                       else "replace it with standard ONNX ops or register a TensorRT plugin for it")
                found.append(Finding(label, f"{node.domain}.{op}", "unsupported-op",
                                     f"no TensorRT importer or plugin for domain '{node.domain}'", fix))
            elif op not in ops:
                if op == "Attention":
                    fix = f"{legalize}, or target TensorRT >= 10.14"
                elif op in sup.ADDED_IN:
                    fix = f"target TensorRT >= {sup.version_str(sup.ADDED_IN[op])}"
                else:
                    fix = "rewrite it with operators in onnx-tensorrt docs/operators.md"
                found.append(Finding(label, op, "unsupported-op",
                                     f"the TensorRT {v} ONNX parser has no importer for {op}", fix))
            elif op == "Attention":
                problems = attention_problems(node, version)
                if problems:
                    found.append(Finding(label, op, "attention-restriction", "; ".join(problems), legalize))
            else:
                why = _restriction(node)
                if why:
                    found.append(Finding(label, op, "op-restriction", why, "rewrite the node to meet the restriction"))
    return found


def _dtype_findings(model: ir.Model) -> list[Finding]:
    values: list[ir.Value] = list(model.graph.inputs) + list(model.graph.initializers.values())
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        values.extend(node.outputs)
    found, seen = [], set()
    for value in values:
        dtype = value.dtype
        if dtype is None or dtype in sup.PLAIN_DTYPES or id(value) in seen:
            continue
        seen.add(id(value))
        users = {u.op_type for u, _ in value.uses()}
        producer = value.producer()
        if (users | {producer.op_type if producer else ""}) & {"QuantizeLinear", "DequantizeLinear"}:
            continue  # trt_qdq checks Q/DQ dtypes
        if dtype in sup.IO_ONLY_DTYPES and (value.is_graph_input() or value.is_graph_output() or users == {"Cast"}):
            continue
        where = producer and node_label(producer) or f"value '{value.name}'"
        if dtype == ir.DataType.DOUBLE:
            fix = "export in float32 (TensorRT would clamp float64 to float32)"
        elif dtype in sup.QUANTIZED_DTYPES:
            fix = "keep quantized types between QuantizeLinear and DequantizeLinear"
        elif dtype in sup.IO_ONLY_DTYPES:
            fix = "cast uint8 right after the network input or right before its output"
        else:
            fix = "cast it to float32, float16, bfloat16, int32, int64 or bool"
        found.append(Finding(where, producer.op_type if producer else "value", "dtype",
                             f"'{value.name}' has dtype {dtype.name}, which TensorRT does not support here", fix))
    return found


def _model_findings(model: ir.Model, version: sup.Version) -> list[Finding]:
    found = []
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx"))
    top = sup.max_opset(version)
    if opset is not None and not sup.MIN_OPSET <= opset <= top:
        found.append(Finding("model", "opset", "opset",
                             f"default-domain opset {opset} is outside TensorRT {sup.version_str(version)}'s "
                             f"range {sup.MIN_OPSET}..{top}", f"export at an opset in {sup.MIN_OPSET}..{top}"))
    for value in model.graph.inputs:
        if value.name not in model.graph.initializers and value.shape is None:
            found.append(Finding(f"input '{value.name}'", "input", "dynamic-rank",
                                 f"graph input '{value.name}' has no known rank",
                                 "export it with a shape (dims may be symbolic, the rank must be fixed)"))
    return found


def lint_model(model: ir.Model, trt_version: str = sup.DEFAULT_TRT_VERSION,
               compute_capability: str = sup.DEFAULT_COMPUTE_CAPABILITY) -> list[Finding]:
    """All findings for ``model`` on TensorRT ``trt_version`` and a GPU of ``compute_capability``."""

    version = sup.parse_version(trt_version)
    cc = sup.parse_compute_capability(compute_capability)
    return (_model_findings(model, version) + _op_findings(model, version)
            + qdq_findings(model, version, cc) + _dtype_findings(model))
