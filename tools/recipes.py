"""Named pipelines for ``--recipe``. The manifest records the expanded spec."""

from __future__ import annotations

from genzip.errors import GenzipError, did_you_mean

RECIPES: dict[str, tuple[str, str]] = {
    "cleanup": ("dce,cse,fold-constants", "remove dead code, merge duplicates, fold constants"),
    "attn": ("canonicalize-attn,dce", "bring every attention into the canonical ONNX Attention form"),
    "window": ("canonicalize-attn,window-attn{window=0.125},dce",
               "sliding-window attention on every self-attention (no residual: DiTFastAttn WA-RS is share)"),
    "w8a8": ("annotate-precision,calibrate,quant{scheme=w8a8}",
             "int8 per-channel weights, static per-tensor int8 activations (TensorRT explicit Q/DQ)"),
    "w8a8-dynamic": ("annotate-precision{scheme=w8a8-dynamic},quant{scheme=w8a8-dynamic}",
                     "int8 per-channel weights, per-token dynamic int8 activations (ORT CPU MatMulInteger)"),
    "w4a8-dynamic": ("annotate-precision{scheme=w4a8-dynamic},quant{scheme=w4a8-dynamic}",
                     "ViDiT-Q W4A8: int4 per-channel weights (stored int4), per-token dynamic int8 activations "
                     "(ORT CPU MatMulInteger)"),
    "w8a8-attn": ("annotate-precision{attention=int8},calibrate,quant{scheme=w8a8}",
                  "w8a8 plus int8 self-attention scores (dynamic Q, smoothed K; fp32 softmax and P.V; ORT)"),
    "w8a8-smooth": ("annotate-precision,smooth{alpha=0.5},calibrate,quant{scheme=w8a8}",
                    "w8a8 after SmoothQuant channel balancing (alpha 0.5, no rotation; static per-tensor activations)"),
    "w4a16": ("annotate-precision{scheme=w4a16 keep-defaults=false},quant{scheme=w4a16}",
              "int4 block-32 weights (DequantizeLinear block_size), fp32 activations, every GEMM"),
    "share": ("canonicalize-attn,share-attn{window=0.125}",
              "DiTFastAttn attention sharing: one artifact, per-step plans (genzip plan, genzip sample)"),
    "share-w8a8": ("canonicalize-attn,annotate-precision,calibrate,quant{scheme=w8a8},share-attn{window=0.125}",
                   "w8a8, then attention sharing over the quantized blocks"),
    "fp8": ("annotate-precision{scheme=fp8},calibrate,quant{scheme=fp8}",
            "float8 E4M3 per-channel weights and static per-tensor activations (Hopper)"),
}


def expand_recipe(name: str, extra: str = "") -> str:
    if name not in RECIPES:
        raise GenzipError(f"unknown recipe '{name}'{did_you_mean(name, RECIPES)}", f"use one of {', '.join(RECIPES)}")
    spec = RECIPES[name][0]
    return f"{spec},{extra}" if extra else spec
