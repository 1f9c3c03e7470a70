"""Pass registry: name -> ``module:Class``, imported only when a pass is used.

To add a pass, write one module with one ``GenzipPass`` subclass and add a line here.
"""

from __future__ import annotations

import importlib

from genzip.errors import GenzipError, did_you_mean

_PASSES: dict[str, str] = {
    "dce": "genzip.passes.cleanup.dce:DeadCodeEliminationPass",
    "cse": "genzip.passes.cleanup.cse:CommonSubexpressionEliminationPass",
    "fold-constants": "genzip.passes.cleanup.fold_constants:FoldConstantsPass",
    "infer-shapes": "genzip.passes.cleanup.infer_shapes:InferShapesPass",
    "canonicalize-attn": "genzip.passes.attention.canonicalize_attn:CanonicalizeAttentionPass",
    "window-attn": "genzip.passes.attention.window_attn:WindowAttentionPass",
    "span-attn": "genzip.passes.attention.span_attn:SpanAttentionPass",
    "legalize-trt": "genzip.passes.lowering.legalize_trt:LegalizeTrtPass",
    "ort-gqa": "genzip.passes.lowering.ort_gqa:OrtGqaPass",
    "share-attn": "genzip.passes.attention.share_attn:ShareAttentionPass",
    "annotate-precision": "genzip.passes.quant.annotate_precision:AnnotatePrecisionPass",
    "calibrate": "genzip.passes.quant.calibrate:CalibratePass",
    "quant": "genzip.passes.quant.quant:QuantPass",
    "smooth": "genzip.passes.quant.smooth:SmoothPass",
    "kv-quant": "genzip.passes.quant.kv_quant:KVQuantPass",
    "cskv": "genzip.passes.quant.cskv:CSKVPass",
    "sensitivity": "genzip.passes.precision.sensitivity:SensitivityPass",
    "mixed-precision": "genzip.passes.precision.mixed_precision:MixedPrecisionPass",
    "expert-prune": "genzip.passes.moe.expert_prune:ExpertPrunePass",
    "cast-float": "genzip.passes.precision.cast_float:CastFloatPass",
}


def pass_names() -> list[str]:
    return sorted(_PASSES)


def register(name: str, target: str) -> None:
    """Register an out-of-tree pass (``target`` is ``module:Class``)."""
    _PASSES[name] = target


def get_pass_class(name: str):
    target = _PASSES.get(name)
    if target is None:
        raise GenzipError(
            f"unknown pass '{name}'{did_you_mean(name, _PASSES)}",
            "run `genzip passes` to list them",
        )
    module, _, cls = target.partition(":")
    pass_cls = getattr(importlib.import_module(module), cls)
    if pass_cls.name != name:
        raise RuntimeError(f"registry maps '{name}' to {target}, whose name is '{pass_cls.name}'")
    return pass_cls
