"""Frozen per-node quantization specs (pt2e style) and their JSON form.

``annotate-precision`` writes one :class:`QuantSpec` as JSON into
``node.metadata_props["genzip.quant"]`` of every MatMul/Gemm/Conv with a constant
weight; ``calibrate`` adds ``genzip.quant.calib`` (the activation range); ``quant``
consumes both keys and leaves neither behind. Schema (version 1)::

    {"v": 1, "scheme": "w8a8", "op": "MatMul", "module": "transformer_blocks.0.attn1.to_q",
     "keep": null,                      # or why the node stays high precision ("first layer", ...)
     "weight": {"input": 1, "dtype": "int8", "granularity": "per-channel", "axis": 1,
                "block_size": null, "symmetric": true},
     "activation": {"input": 0, "dtype": "int8", "granularity": "per-tensor",   # or "per-token"
                    "dynamic": false, "symmetric": true},                       # null: not quantized
     "bos": false}                      # MixDQ: token 0 (axis -2) of the activation stays fp32

dtypes: fp32, int8, uint8, int4, float8e4m3fn. An ``Attention`` node's spec
(``annotate-precision{attention=int8}``, ``quant_attention``) reads "weight" as K
(input 1) and "activation" as Q (input 0), both dynamic per-tensor. Granularity: per-tensor, per-channel
(``axis`` = the weight's output-channel axis: MatMul [K, N] -> 1, Gemm transB=1
[N, K] -> 0, Conv [O, I, kh, kw] -> 0), per-block (``axis`` = the reduction axis,
``block_size`` along it), per-token (dynamic, one scale per row of the activation).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import onnx_ir as ir

from genzip.metadata import QUANT_CALIB_KEY as CALIB_KEY
from genzip.metadata import QUANT_KEY as META_KEY

VERSION = 1
SCHEMES = ("w8a8", "w8a8-dynamic", "w4a16", "w4a8", "w4a8-dynamic", "fp8")
# Per-token dynamic int8 activations (ViDiT-Q), MatMul/Gemm only.
DYNAMIC_SCHEMES = ("w8a8-dynamic", "w4a8-dynamic")
QUANT_OPS = ("MatMul", "Gemm", "Conv")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TensorSpec:
    input: int
    dtype: str
    granularity: str
    axis: int | None = None
    block_size: int | None = None
    dynamic: bool = False
    symmetric: bool = True


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuantSpec:
    scheme: str
    op: str
    module: str | None
    keep: str | None
    weight: TensorSpec
    activation: TensorSpec | None
    bos: bool = False

    def to_json(self) -> str:
        body = {"v": VERSION, **dataclasses.asdict(self)}
        return json.dumps(body, sort_keys=True, separators=(",", ":"))

    @staticmethod
    def from_json(raw: str) -> QuantSpec:
        body: dict[str, Any] = json.loads(raw)
        if body.pop("v", None) != VERSION:
            raise ValueError(f"unsupported {META_KEY} spec version in {raw[:80]}")
        act = body.pop("activation")
        return QuantSpec(
            weight=TensorSpec(**body.pop("weight")),
            activation=TensorSpec(**act) if act is not None else None,
            **body,
        )


def weight_axes(node: ir.Node) -> tuple[int, int]:
    """(output-channel axis, reduction axis) of the node's constant weight (input 1)."""
    if node.op_type == "MatMul":
        return 1, 0
    if node.op_type == "Gemm":
        trans_b = node.attributes.get_int("transB", 0)
        return (0, 1) if trans_b else (1, 0)
    return 0, 1  # Conv [O, I, kh, kw]


def weight_value(node: ir.Node) -> ir.Value | None:
    """The node's weight when it is a constant initializer of the right rank, else None."""
    if node.op_type not in QUANT_OPS or len(node.inputs) < 2:
        return None
    w = node.inputs[1]
    if w is None or w.const_value is None or not w.is_initializer():
        return None
    rank = len(w.const_value.shape)
    if node.op_type in ("MatMul", "Gemm") and rank != 2:
        return None
    if node.op_type == "Gemm" and node.attributes.get_int("transA", 0):
        return None
    if node.op_type == "Conv" and rank < 3:
        return None
    return w


def spec_of(node: ir.Node) -> QuantSpec | None:
    raw = node.metadata_props.get(META_KEY)
    return QuantSpec.from_json(raw) if raw else None


def annotated_nodes(model: ir.Model, ops: tuple[str, ...] | None = QUANT_OPS) -> list[tuple[ir.Node, QuantSpec]]:
    """Annotated nodes of the main graph; ``ops=None`` includes ``Attention`` specs (``quant_attention``)."""
    return [(n, s) for n in model.graph if (s := spec_of(n)) is not None and (ops is None or s.op in ops)]


def calib_of(node: ir.Node) -> dict[str, Any] | None:
    raw = node.metadata_props.get(CALIB_KEY)
    return json.loads(raw) if raw else None
