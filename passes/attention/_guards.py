"""Refusals shared by the attention rewrites (window-attn, share-attn)."""

from __future__ import annotations

import onnx_ir as ir

from genzip.errors import GenzipError
from genzip.metadata import INT8_SCORES_KEY


def refuse_int8_scores(model: ir.Model, pass_name: str) -> None:
    """Attention rewrites need the Attention nodes that int8 scores replaced: fail, do not skip."""
    if model.metadata_props.get(INT8_SCORES_KEY):
        raise GenzipError(
            f"{pass_name} finds no Attention nodes to rewrite: quant gave "
            f"{model.metadata_props[INT8_SCORES_KEY]} self-attentions int8 scores (annotate-precision{{attention=int8}})",
            f"drop attention=int8 (recipe w8a8 instead of w8a8-attn) to combine quantization with {pass_name}",
        )
