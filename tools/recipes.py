"""Named pipelines for ``--recipe``. The manifest records the expanded spec."""

from __future__ import annotations

from genzip.errors import GenzipError, did_you_mean

RECIPES: dict[str, tuple[str, str]] = {
    "cleanup": ("dce,cse,fold-constants", "remove dead code, merge duplicates, fold constants"),
    "attn": ("canonicalize-attn,dce", "bring every attention into the canonical ONNX Attention form"),
    "window": ("canonicalize-attn,window-attn{window=0.125},dce", "DiTFastAttn window attention on every self-attention"),
}


def expand_recipe(name: str, extra: str = "") -> str:
    if name not in RECIPES:
        raise GenzipError(f"unknown recipe '{name}'{did_you_mean(name, RECIPES)}", f"use one of {', '.join(RECIPES)}")
    spec = RECIPES[name][0]
    return f"{spec},{extra}" if extra else spec
