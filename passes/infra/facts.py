"""Facts: named properties of a graph that passes require and ensure.

Each fact has a checker that inspects the graph itself (never the recorded
``genzip.facts`` metadata), returning ``None`` when the fact holds or a short
description of the first violation. ``GenzipPass`` runs the checkers of its
required facts before the pass and of its ensured facts after it, so a pass that
breaks its promise fails at once. Checkers live with the family that owns the
fact and are imported by name only when a fact is checked.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import onnx_ir as ir

# fact -> ("module:function", what the fact promises)
_FACTS: dict[str, tuple[str, str]] = {
    "attention-canonical": ("genzip.passes.attention._facts:canonical_problem",
                            "every ONNX Attention node is in canonicalize-attn's canonical form"),
    "attention-windowed": ("genzip.passes.attention._facts:windowed_problem",
                           "window-attn replaced the self-attention it selected (the rest stays dense)"),
    "attention-shared": ("genzip.passes.attention._facts:shared_problem",
                         "share-attn moved the self-attention blocks it selected into its mode switches"),
    "quant-annotated": ("genzip.passes.quant._facts:annotated_problem",
                        "quantizable nodes carry valid genzip.quant specs"),
    "quant-calibrated": ("genzip.passes.quant._facts:calibrated_problem",
                         "every annotation with static activations has an activation range"),
    "quantized": ("genzip.passes.quant._facts:quantized_problem",
                  "no quantization annotation is left unconsumed"),
    "kv-int8": ("genzip.passes.quant._kv_facts:kv_int8_problem",
                "every KV-cache input and output is int8 with a float32 scale per head and token"),
    "kv-lowrank": ("genzip.passes.quant._cskv_layout:kv_lowrank_problem",
                   "every KV-cache input holds rank-r features (cskv) beside its basis and window"),
    "kv-shared-buffer": ("genzip.passes.lowering._gqa_layout:kv_shared_problem",
                         "every KV-cache output comes from a GroupQueryAttention updating its past input in place"),
    "sensitivity-measured": ("genzip.passes.precision._facts:measured_problem",
                             "the model carries a sensitivity table for its annotated layers"),
}


def fact_names() -> list[str]:
    return sorted(_FACTS)


def describe(fact: str) -> str:
    return _FACTS[fact][1] if fact in _FACTS else ""


def register_fact(name: str, target: str, description: str = "") -> None:
    """Register the checker (``module:function``) of an out-of-tree fact."""
    _FACTS[name] = (target, description)


def checker(fact: str) -> Callable[[ir.Model], str | None]:
    if fact not in _FACTS:
        raise RuntimeError(f"fact '{fact}' has no checker; register one with register_fact")
    module, _, name = _FACTS[fact][0].partition(":")
    return getattr(importlib.import_module(module), name)


def problem(fact: str, model: ir.Model) -> str | None:
    """``None`` when ``fact`` holds on ``model``, else what violates it."""
    return checker(fact)(model)
