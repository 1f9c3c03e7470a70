"""TensorRT parser rules shared by ``legalize-trt`` and the backend's lint.

Invariant: the same rule (``attention_problems``) decides both what
``genzip lint --target trt`` reports for ``Attention`` and what ``legalize-trt``
rewrites. Nothing here mutates a model.
"""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

from genzip.passes.infra.graph import model_graphs
from genzip.passes.lowering import _trt_support as sup

MASK_NOT_4D = "attn_mask is not 4D"


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
