"""``expert-prune{plan=FILE}``: EEP expert pruning and merging on the exported graph.

Invariant after the pass: in every MoE layer the plan names (see ``_plan`` for the
file format and ``_moe_graph`` for how layers are found), the router weight holds
only the kept experts' rows in the plan's order (the softmax after it renormalizes
over them, as EEP's router slice does; a plan's ``router`` table mixes rows, EEP's router
mapping) and every per-expert weight tensor holds
``M @ W``: kept expert ``t`` = ``sum_s M[t, s] W_s`` with EEP's merge matrix ``M``.
TopK's ``k`` is unchanged, and every layer still has at least ``k`` experts. Layers
the plan leaves out, and layers whose plan is the identity, are bit-identical.

It works on the ONNX graph because the exported structure keeps the experts
recoverable: one ``[E, ...]`` initializer per expert weight, gathered by the router's
top-k indices, and the router's ``[E, H]`` weight; nothing else depends on E.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from genzip.errors import GenzipError
from genzip.passes.infra.context import PassContext
from genzip.passes.infra.contract import GenzipPass, GenzipPassResult
from genzip.passes.moe import _moe_graph, _plan


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExpertPruneOptions:
    plan: str = ""  # JSON expert plan (genzip eep-search writes one)

    def __post_init__(self):
        if not self.plan:
            raise ValueError("give plan=FILE (an expert plan, e.g. from genzip eep-search)")


def _set_const(value: ir.Value, array: np.ndarray) -> None:
    value.const_value = ir.tensor(np.ascontiguousarray(array), name=value.name)
    value.shape = ir.Shape(array.shape)


def _with_last_dim(value: ir.Value, k: int) -> None:
    if value.shape is not None and len(value.shape) >= 1:
        value.shape = ir.Shape([*list(value.shape)[:-1], k])


def apply_layer(layer: _moe_graph.MoeLayer, lp: _plan.LayerPlan) -> int:
    """Rewrite one layer in place; returns the bytes of weights removed."""
    before = 0
    for stack in layer.stacks:
        array = stack.const_value.numpy()
        before += array.nbytes
        _set_const(stack, _plan.apply_to_stack(array, lp))
        before -= stack.const_value.numpy().nbytes
    weight = layer.router_weight.const_value.numpy()
    before += weight.nbytes
    rows = np.moveaxis(weight, layer.router_axis, 0)  # [E, H]
    _set_const(layer.router_weight, np.moveaxis(_plan.apply_to_stack(rows, lp, "router"), 0, layer.router_axis))
    before -= layer.router_weight.const_value.numpy().nbytes
    bias = layer.router_bias
    if bias is not None and bias.const_value is not None and bias.const_value.numpy().shape == (layer.num_experts,):
        _set_const(bias, _plan.apply_to_stack(bias.const_value.numpy(), lp, "router"))
    for value in layer.logits:
        _with_last_dim(value, len(lp.keep))
    return before


class ExpertPrunePass(GenzipPass):
    name = "expert-prune"
    Options = ExpertPruneOptions
    summary = "EEP: remove pruned experts, slice the router, merge pruned experts into kept ones (plan=FILE)"
    transforming = True

    def run(self, model: ir.Model, context: PassContext) -> GenzipPassResult:
        plan = _plan.load_plan(self.options.plan)
        layers = _moe_graph.moe_layers(model)
        where = f"expert-prune plan '{self.options.plan}'"
        if not layers:
            if plan.layers:
                raise GenzipError(f"expert-prune: the model has no mixture-of-experts layer (a router TopK whose "
                                  f"indices gather per-expert weights), but {where} names layers",
                                  "use expert-prune on an exported MoE LLM (Mixtral, Qwen2-MoE)")
            return GenzipPassResult(model, False, {"moe_layers": 0}, noop_reason="the model has no MoE layer")
        counts = {(layer.num_experts, layer.top_k) for layer in layers}
        if len(counts) != 1:
            raise GenzipError(f"expert-prune: MoE layers differ in expert count / top-k ({sorted(counts)})",
                              "genzip plans assume one expert count and top-k for every layer")
        (num_experts, top_k), = counts
        _plan.check_plan(plan, layers=len(layers), num_experts=num_experts, top_k=top_k, where=where)
        seen: set[int] = set()
        for layer in layers:
            for stack in layer.stacks:
                if id(stack) in seen:
                    raise GenzipError(f"expert-prune: expert weights '{stack.name}' are shared by two MoE layers",
                                      "prune a model whose layers own their experts")
                seen.add(id(stack))
        removed = merged = pruned_layers = 0
        for layer in layers:
            lp = plan.layers.get(layer.index)
            if lp is None or lp.is_identity(num_experts):
                continue
            removed += apply_layer(layer, lp)
            pruned_layers += 1
            merged += sum(1 for t, src in lp.merge.items() for s, w in src.items() if s != t and w != 0.0)
        stats = {
            "moe_layers": len(layers), "layers_changed": pruned_layers, "experts_before": num_experts * len(layers),
            "experts_after": sum(len(plan.layers[i].keep) if i in plan.layers else num_experts
                                 for i in range(len(layers))),
            "merge_terms": merged, "weight_bytes_removed": removed, "top_k": top_k,
        }
        why = None if pruned_layers else "the plan keeps every expert of every layer unmerged"
        return GenzipPassResult(model, pruned_layers > 0, stats, noop_reason=why)

    def ensures(self, model: ir.Model) -> None:
        super().ensures(model)
        for layer in _moe_graph.moe_layers(model):
            sizes = {s.const_value.numpy().shape[0] for s in layer.stacks}
            if sizes != {layer.num_experts} or layer.num_experts < layer.top_k:
                raise ir.passes.PostconditionError(
                    f"expert-prune: MoE layer {layer.index} has {layer.num_experts} router experts but expert "
                    f"weights for {sorted(sizes)} (top-{layer.top_k})")
