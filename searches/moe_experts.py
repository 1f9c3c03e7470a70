"""Expert plans applied to a transformers MoE module in eager torch, for ``eep-search``.

Invariant: :func:`applied` computes exactly what ``expert-prune`` builds in the graph
from the same plan (the same ``_plan.apply_to_stack`` on every ``[E, ...]`` expert
parameter, the router's kept rows), and restores the original weights on exit.
MoE blocks are the modules with a ``gate`` holding an ``[E, H]`` ``weight`` and an
``experts`` module of ``[E, ...]`` parameters, in module order (= the graph's router
order for transformers decoders).
"""

from __future__ import annotations

import contextlib
import dataclasses

import numpy as np
import torch

from genzip.errors import GenzipError
from genzip.passes.moe import _plan


@dataclasses.dataclass
class MoeBlock:
    name: str
    gate: torch.nn.Module
    experts: torch.nn.Module
    num_experts: int
    top_k: int


def moe_blocks(module: torch.nn.Module) -> list[MoeBlock]:
    blocks = []
    for name, sub in module.named_modules():
        gate, experts = getattr(sub, "gate", None), getattr(sub, "experts", None)
        weight = getattr(gate, "weight", None)
        if not isinstance(weight, torch.nn.Parameter) or weight.dim() != 2 or experts is None:
            continue
        e = weight.shape[0]
        params = [p for p in experts.parameters(recurse=False) if p.dim() >= 2]
        if not params or any(p.shape[0] != e for p in params):
            continue
        top_k = getattr(gate, "top_k", None) or getattr(sub, "top_k", None)
        if top_k is None:
            raise GenzipError(f"eep-search: MoE block '{name}' has no top_k", "use a transformers MoE model")
        blocks.append(MoeBlock(name, gate, experts, e, int(top_k)))
    return blocks


def model_shape(module: torch.nn.Module) -> tuple[list[MoeBlock], int, int]:
    """(blocks, experts per layer, top-k); a model without MoE blocks is a GenzipError."""
    blocks = moe_blocks(module)
    if not blocks:
        raise GenzipError("eep-search: the model has no mixture-of-experts layers",
                          "give a MoE causal LM (trained-moe, a Mixtral or Qwen2-MoE folder)")
    shapes = {(b.num_experts, b.top_k) for b in blocks}
    if len(shapes) != 1:
        raise GenzipError(f"eep-search: MoE layers differ in experts / top-k {sorted(shapes)}",
                          "genzip plans assume one expert count per layer")
    (e, k), = shapes
    return blocks, e, k


def _set_count(block: MoeBlock, n: int) -> None:
    for owner in (block.gate, block.experts):
        if hasattr(owner, "num_experts"):
            owner.num_experts = n


@contextlib.contextmanager
def applied(module: torch.nn.Module, plan: _plan.ExpertPlan):
    """The module computing the pruned/merged model inside the ``with``."""
    blocks, e, _ = model_shape(module)
    saved = []
    try:
        with torch.no_grad():
            for i, block in enumerate(blocks):
                lp = plan.layers.get(i)
                if lp is None:
                    continue
                params = [(n, p) for n, p in block.experts.named_parameters(recurse=False) if p.dim() >= 2]
                saved.append((block, block.gate.weight.data, [(n, p.data) for n, p in params]))
                for _, p in params:
                    p.data = torch.from_numpy(_plan.apply_to_stack(p.data.numpy(), lp))
                block.gate.weight.data = torch.from_numpy(
                    _plan.apply_to_stack(block.gate.weight.data.numpy(), lp, "router"))
                _set_count(block, len(lp.keep))
        yield module
    finally:
        for block, gate_w, params in saved:
            block.gate.weight.data = gate_w
            for n, data in params:
                getattr(block.experts, n).data = data
            _set_count(block, e)


@torch.no_grad()
def router_frequencies(module: torch.nn.Module, windows: torch.Tensor) -> np.ndarray:
    """``[layers, E]``: how often each expert is in a token's top-k over ``windows``."""
    blocks, e, k = model_shape(module)
    counts = np.zeros((len(blocks), e))
    hooks = []
    for i, block in enumerate(blocks):
        def hook(_mod, args, _out, i=i):
            x = args[0].reshape(-1, args[0].shape[-1])
            top = torch.topk(x @ blocks[i].gate.weight.T, k, dim=-1).indices
            counts[i] += np.bincount(top.reshape(-1).numpy(), minlength=e)
        hooks.append(block.gate.register_forward_hook(hook))
    try:
        module(input_ids=windows)
    finally:
        for h in hooks:
            h.remove()
    return counts
