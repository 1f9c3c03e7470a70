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

import dataclasses

import onnx_ir as ir

from genzip.backends import trt_support as sup

MASK_NOT_4D = "attn_mask is not 4D"
_DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclasses.dataclass(frozen=True)
class Finding:
    node: str
    op: str
    rule: str
    message: str
    fix: str

    def line(self) -> str:
        return f"{self.node} ({self.op}): [{self.rule}] {self.message}; fix: {self.fix}"


def int_attr(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return attr.as_int() if attr is not None else default


def node_label(node: ir.Node) -> str:
    return node.name or f"<unnamed {node.op_type}>"


def live(value: ir.Value | None) -> bool:
    return value is not None and (bool(value.uses()) or value.is_graph_output())


def is_plugin_node(node: ir.Node, version: sup.Version) -> bool:
    return node.domain == sup.PLUGIN_DOMAIN and node.op_type in sup.PLUGIN_OPS and sup.plugins_parsed(version)


def attn_graphs(model: ir.Model, version: sup.Version = sup.NEWEST) -> list[ir.Graph | ir.Function]:
    """Graphs the parser imports: main graph, its subgraphs, and the functions it inlines."""
    from genzip.passes.graph_utils import model_graphs

    plugin_fns = sup.plugins_parsed(version)
    return [g for g in model_graphs(model)
            if not (plugin_fns and isinstance(g, ir.Function) and g.domain == sup.PLUGIN_DOMAIN
                    and g.name in sup.PLUGIN_OPS)]


def attention_problems(node: ir.Node, version: sup.Version) -> list[str]:
    """Why TensorRT ``version``'s parser rejects this ONNX Attention node ([] = imports natively)."""
    if not sup.has_onnx_attention(version):
        return [f"the TensorRT {sup.version_str(version)} ONNX parser has no Attention importer (added in 10.14)"]
    problems = []
    for i, name in enumerate(("Q", "K", "V")):
        shape = node.inputs[i].shape if node.inputs[i] is not None else None
        if shape is not None and len(shape) != 4:
            problems.append(f"{name} is {len(shape)}D, not 4D")
    mask = node.inputs[3] if len(node.inputs) > 3 else None
    if mask is not None and mask.shape is not None and len(mask.shape) != 4:
        problems.append(MASK_NOT_4D)
    for i, name in ((4, "past_key"), (5, "past_value"), (6, "nonpad_kv_seqlen")):
        if len(node.inputs) > i and node.inputs[i] is not None:
            problems.append(f"input {name} is unsupported")
    for out, name in zip(node.outputs[1:], ("present_key", "present_value", "qk_matmul_output")):
        if live(out):
            problems.append(f"output {name} is unsupported")
    softcap = node.attributes.get("softcap")
    if softcap is not None and softcap.as_float() != 0.0:
        problems.append("softcap is unsupported")
    if int_attr(node, "qk_matmul_output_mode", 0) != 0:
        problems.append("qk_matmul_output_mode is unsupported")
    if int_attr(node, "left_window_size", -1) >= 0 or int_attr(node, "right_window_size", -1) >= 0:
        problems.append("the opset-25 window attributes are unsupported")
    return problems


def is_const(value: ir.Value | None) -> bool:
    if value is None:
        return False
    producer = value.producer()
    return value.const_value is not None or (producer is not None and producer.op_type == "Constant")


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
    from genzip.backends.trt_qdq import qdq_findings

    version = sup.parse_version(trt_version)
    cc = sup.parse_compute_capability(compute_capability)
    return (_model_findings(model, version) + _op_findings(model, version)
            + qdq_findings(model, version, cc) + _dtype_findings(model))
