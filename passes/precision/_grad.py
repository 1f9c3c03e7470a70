"""LLM-MQ's first-order sensitivity ``|gᵀ(W − Q(W))|`` with torch autograd on the source module.

g is the gradient of the next-token cross-entropy (labels = the calibration tokens
shifted by one) with respect to each layer's weight, summed over calibration
samples; ``W − Q(W)`` is the same weight error ``quant`` would make. The ONNX node
is matched to its ``torch.nn.Module`` by the exporter's module path, and the
weights must agree (ONNX MatMul holds ``Linear.weight`` transposed); a layer that
does not match gets no estimate (the pass stats count it).

The module is the pass context's ``torch_module``: the compile driver sets it to
the source's ``info["module"]`` (presets, HF folders, ``module:function``);
library callers build their own ``PassContext``.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def as_module(obj: Any) -> Any:
    """``obj`` when it is a ``torch.nn.Module`` (the context's eager source), else None."""
    try:
        import torch
    except ImportError:
        return None
    return obj if isinstance(obj, torch.nn.Module) else None


def _torch_weight(module, path: str | None, w_onnx: np.ndarray):
    """(parameter, transposed?) of the Linear at ``path`` holding ``w_onnx``, or None."""
    if not path:
        return None
    try:
        sub = module.get_submodule(path)
    except AttributeError:
        return None
    p = getattr(sub, "weight", None)
    if p is None or p.ndim != 2:
        return None
    t = p.detach().cpu().numpy()
    for transposed, cand in ((True, t.T), (False, t)):
        if cand.shape == w_onnx.shape and np.allclose(cand, w_onnx, rtol=1e-5, atol=1e-6):
            return p, transposed
    return None


def first_order(module, layers: list[tuple[str | None, np.ndarray]], errors: list[dict[str, np.ndarray]],
                samples: list[dict[str, np.ndarray]]) -> list[dict[str, float] | None]:
    """Per layer: {format: |Σ g ⊙ (W − Q(W))|} (ONNX layout), or None when unmatched.

    ``layers`` = (module path, ONNX weight); ``errors[l][fmt]`` = W − Q(W); ``samples``
    are feed dicts whose ``input_ids`` drive the LM loss."""
    import torch

    params = [_torch_weight(module, path, w) for path, w in layers]
    wanted = [p for p, _ in filter(None, params)]
    grads: dict[int, torch.Tensor] = {}
    was_training = module.training
    module.eval()
    try:
        for feeds in samples:
            ids = torch.from_numpy(np.asarray(feeds["input_ids"], np.int64))
            kwargs = {"input_ids": ids}
            if "attention_mask" in feeds:
                kwargs["attention_mask"] = torch.from_numpy(np.asarray(feeds["attention_mask"]))
            logits = module(**kwargs).logits
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                                     ids[:, 1:].reshape(-1))
            for p, g in zip(wanted, torch.autograd.grad(loss, wanted, allow_unused=True)):
                if g is not None:
                    grads[id(p)] = grads.get(id(p), 0) + g.detach()
    finally:
        module.train(was_training)
    out: list[dict[str, float] | None] = []
    for match, err in zip(params, errors):
        if match is None or id(match[0]) not in grads:
            out.append(None)
            continue
        g = grads[id(match[0])].cpu().numpy().astype(np.float64)
        g = g.T if match[1] else g
        out.append({fmt: float(abs(np.sum(g * e))) for fmt, e in err.items()})
    return out
