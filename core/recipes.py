"""Named pipelines (``--recipe``), with parameters. The manifest records the expanded spec.

A recipe is written like one pipeline item: ``NAME`` or ``NAME{key=value ...}``
(``--recipe 'share-w8a8{window=0.0625}'``; in a config file
``recipe = {name = "share-w8a8", window = 0.0625}``). Parameters map onto the options
of the recipe's passes:

* ``key=value`` sets option ``key`` on *every* pass of the recipe that has that option
  (``window`` reaches both ``share-attn`` of ``share-w8a8``; ``scheme`` reaches
  ``annotate-precision`` and ``quant``);
* ``PASS.key=value`` sets it on that pass only (``quant.scheme=w8a8``);
* a key no pass of the recipe takes is an error listing the recipe's parameters.

Values are checked by the passes' own Options when the pipeline is built.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from genzip.errors import GenzipError, did_you_mean
from genzip.passes import PassSpec, get_pass_class, parse_pipeline, print_pipeline

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


def _value(value: Any) -> str:
    """A config value in spec syntax (bools lower case, lists comma-joined)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(_value(v) for v in value)
    return str(value)


def _option_names(name: str) -> set[str]:
    return {f.name.replace("_", "-") for f in dataclasses.fields(get_pass_class(name).Options)}


def recipe_parameters(name: str) -> list[str]:
    """Every parameter recipe ``name`` takes: its passes' options, bare and ``PASS.key``."""
    items = parse_pipeline(RECIPES[name][0])
    bare = sorted(set().union(*(_option_names(i.name) for i in items)))
    return bare + sorted(f"{i.name}.{k}" for i in items for k in _option_names(i.name))


def _unknown(name: str) -> GenzipError:
    return GenzipError(f"unknown recipe '{name}'{did_you_mean(name, RECIPES)}", f"use one of {', '.join(RECIPES)}")


def expand_recipe(name: str, extra: str = "", params: Mapping[str, Any] | None = None) -> str:
    """The pipeline of recipe ``name`` with ``params`` applied (module docstring), then
    ``extra`` appended. ``name`` may carry its parameters: ``share-w8a8{window=0.0625}``."""
    params = dict(params or {})
    if "{" in name:
        parsed = parse_pipeline(name)
        if len(parsed) != 1:
            raise GenzipError(f"recipe '{name}' is not NAME{{key=value ...}}", "give one recipe name with its parameters")
        name, params = parsed[0].name, {**dict(parsed[0].options), **params}
    if name not in RECIPES:
        raise _unknown(name)
    items = parse_pipeline(RECIPES[name][0])
    for key, value in params.items():
        key = str(key).replace("_", "-")
        target, _, option = key.rpartition(".")
        hits = [i for i, item in enumerate(items)
                if (not target or item.name == target) and option in _option_names(item.name)]
        if not hits:
            accepted = recipe_parameters(name)
            bare = [a for a in accepted if "." not in a]
            raise GenzipError(f"recipe '{name}' has no parameter '{key}'{did_you_mean(key, accepted)}",
                              f"its parameters are its passes' options: {', '.join(bare)} (PASS.key for one pass)")
        for i in hits:
            options = dict(items[i].options)
            options[option] = _value(value)
            items[i] = PassSpec(items[i].name, tuple(options.items()))
    spec = print_pipeline(items)
    return f"{spec},{extra}" if extra else spec


_COMPONENT_SPEC = re.compile(r"^([a-z_][a-z0-9_]*)=(.*)$", re.S)  # text_encoder_3=dce


def split_component_passes(passes: str | list[str] | tuple[str, ...]) -> tuple[str, dict[str, str]]:
    """(the bare spec, {component: spec}) of ``--passes`` values: ``NAME=SPEC`` names a
    pipeline component (a pass spec never matches: options sit inside ``{...}``), anything
    else is the denoiser's and the bare values are joined in order. A component named
    twice is a one-line error."""
    values = [passes] if isinstance(passes, str) else list(passes)
    bare: list[str] = []
    named: dict[str, str] = {}
    for value in values:
        match = _COMPONENT_SPEC.match(value.strip())
        if match is None:
            if value.strip():
                bare.append(value.strip())
            continue
        name, spec = match.groups()
        if name in named:
            raise GenzipError(f"--passes names component '{name}' twice", f"give one --passes {name}=SPEC")
        named[name] = spec.strip()
    return ",".join(bare), named
