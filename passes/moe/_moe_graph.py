"""Find the mixture-of-experts layers of an exported graph.

A layer is recognized by its routing, the form transformers' ``batched_mm`` experts
export as (Mixtral, Qwen2-MoE, ...; see ``frontend.hf_folder.exportable_experts``)::

    router = Gemm/MatMul(x, W_router[E, H] or [H, E]) -> Softmax/Cast... -> TopK(k)
    TopK.indices -> Reshape/Unsqueeze... -> Gather/GatherND(stack[E, ...], indices)

Invariant: a returned :class:`MoeLayer` names every initializer holding per-expert
weights (leading axis E) that the layer's indices select from, and the router weight
with its expert axis; every consumer of the indices was understood, so slicing those
tensors to K experts leaves a graph that computes the pruned model. A TopK over a
router whose indices reach anything else (one-hot masks, loops over experts) is an
unknown dispatch form: :func:`moe_layers` raises GenzipError naming the router.
"""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

from genzip.errors import GenzipError

# Ops the router logits pass through between the router GEMM and TopK (elementwise over experts).
_LOGIT_OPS = frozenset({"Softmax", "Cast", "Identity", "Sigmoid", "LogSoftmax"})
# Ops that only reshape the expert indices on their way to the gathers.
_INDEX_OPS = frozenset({"Reshape", "Unsqueeze", "Squeeze", "Flatten", "Cast", "Identity", "Expand", "Transpose"})


@dataclasses.dataclass
class MoeLayer:
    index: int
    topk: ir.Node
    top_k: int
    num_experts: int
    router: ir.Node
    router_weight: ir.Value
    router_axis: int  # the expert axis of router_weight
    router_bias: ir.Value | None
    logits: list[ir.Value]  # values with E as their last dim, router output to TopK input
    stacks: list[ir.Value]  # initializers [E, ...] the experts' weights are gathered from

    @property
    def name(self) -> str:
        return self.router_weight.name or self.router.name or f"router {self.index}"


def _const(value: ir.Value | None):
    return None if value is None else value.const_value


def _router(topk: ir.Node) -> tuple[ir.Node, list[ir.Value]] | None:
    value, logits = topk.inputs[0], []
    while value is not None:
        logits.append(value)
        node = value.producer()
        if node is None:
            return None
        if node.op_type in ("Gemm", "MatMul") and _const(node.inputs[1]) is not None:
            return node, logits
        if node.op_type not in _LOGIT_OPS or len(node.inputs) != 1:
            return None
        value = node.inputs[0]
    return None


def _stacks(topk: ir.Node, num_experts: int) -> list[ir.Value] | None:
    """Initializers the TopK indices gather from; None when the indices reach anything else."""
    stacks: dict[int, ir.Value] = {}
    front = [topk.outputs[1]]
    while front:
        value = front.pop()
        for user, slot in value.uses():
            if user.op_type in ("Gather", "GatherND") and slot == 1:
                data = user.inputs[0]
                if (user.op_type == "Gather" and user.attributes.get_int("axis", 0) != 0) \
                        or _const(data) is None or data.shape is None or data.shape[0] != num_experts:
                    return None
                stacks[id(data)] = data
            elif user.op_type in _INDEX_OPS and slot == 0:
                front.extend(user.outputs)
            else:
                return None
    return list(stacks.values())


def moe_layers(model: ir.Model) -> list[MoeLayer]:
    """The graph's MoE layers in topological order (layer i = the i-th router)."""
    layers = []
    for node in model.graph:
        if node.op_type != "TopK" or len(node.outputs) < 2:
            continue
        found = _router(node)
        if found is None:
            continue
        router, logits = found
        weight = router.inputs[1]
        axis = 0 if router.op_type == "Gemm" and router.attributes.get_int("transB", 0) else 1
        if len(weight.shape or ()) != 2 or router.op_type == "Gemm" and router.attributes.get_int("transA", 0):
            continue
        num_experts = weight.shape[axis]
        k_tensor = _const(node.inputs[1])
        if k_tensor is None or not isinstance(num_experts, int):
            continue
        top_k = int(k_tensor.numpy().ravel()[0])
        stacks = _stacks(node, num_experts)
        if stacks is None:
            raise GenzipError(
                f"expert-prune: the experts routed by '{weight.name or router.name}' are dispatched in a form "
                "genzip cannot prune (the top-k indices reach something other than Gather/GatherND over "
                "per-expert weights)", "export the model with transformers' batched_mm experts (genzip's "
                "frontend does this for HF folders and presets)")
        if not stacks:
            continue
        bias = router.inputs[2] if router.op_type == "Gemm" and len(router.inputs) > 2 else None
        layers.append(MoeLayer(len(layers), node, top_k, num_experts, router, weight, axis, bias, logits, stacks))
    return layers
