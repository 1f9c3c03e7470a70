"""``genzip.WindowAttention`` (domain ``genzip``, version 1): sliding-window self-attention.

Schema::

    Y[, R] = genzip.WindowAttention(Q, K, V) {window: int, chunk: int, scale: float}
    Q: [B, Hq, N, D]   K: [B, Hkv, N, D]   V: [B, Hkv, N, Dv]   Y, R: [B, Hq, N, Dv]

Usually ``Hq == Hkv``; grouped-query inputs (``Hq = G·Hkv``, query head h uses
KV head h // G) get their own function (overload suffix ``_g{G}``).

Query ``i`` attends to key ``j`` iff ``|i - j| <= window`` (``window = 0``: only
itself; both sides always bounded). ``R`` (optional) is ``full - Y`` where
``full`` is unrestricted attention, the residual DiTFastAttn's WA-RS caches.

Invariant: the model-local function body for ``(window, chunk, residual)`` is made
of standard ONNX ops only, keeps N dynamic, and costs O(N·(chunk + 2·window))
(see ``banded_attention``). One function is generated per configuration; its
``overload`` (e.g. ``w512_c256`` or ``w512_c256_res``) names the parameters while
the node still carries ``window`` and ``chunk`` for a TensorRT plugin. ``scale``
is read from the node through an attribute reference.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx_ir as ir

from genzip.plugins.banded_attention import banded_attention
from genzip.plugins.banded_attention import choose_chunk as choose_band_chunk
from genzip.plugins.onnx_fn import GENZIP_DOMAIN, MIN_ONNX_OPSET, FnBuilder, attr_params, install_function

OP_TYPE = "WindowAttention"


def choose_chunk(window: int) -> int:
    """Default chunk for a two-sided window (see ``banded_attention.choose_chunk``)."""
    if window < 0:
        raise ValueError(f"window must be >= 0, got {window}")
    return choose_band_chunk(2 * window)


def overload_name(window: int, chunk: int, residual: bool, group: int = 1) -> str:
    return f"w{window}_c{chunk}" + (f"_g{group}" if group > 1 else "") + ("_res" if residual else "")


def build_function(window: int, chunk: int, residual: bool, onnx_opset: int, group: int = 1) -> ir.Function:
    """The function body of one ``(window, chunk, residual, group)`` configuration.

    ``group`` is the number of query heads per KV head (1 unless grouped-query).
    """
    if window < 0 or chunk < 1 or group < 1:
        raise ValueError(f"need window >= 0, chunk >= 1, group >= 1; got {window}, {chunk}, {group}")
    overload = overload_name(window, chunk, residual, group)
    fb = FnBuilder(f"wa_{overload}")
    q, k, v = (ir.Value(name=name) for name in ("q", "k", "v"))
    scale = ir.Attr("scale", ir.AttributeType.FLOAT, None, ref_attr_name="scale")
    y = banded_attention(fb, q, k, v, scale, chunk=chunk, left=window, right=window, group=group)
    outputs = [y]
    if residual:
        # Full attention only on residual (WA-RS "full") steps; the subtraction is
        # what lets window + cached residual reproduce it later.
        outputs.append(fb.op("Sub", fb.op("Attention", q, k, v, scale=scale), y))
    attrs = attr_params(window=ir.AttributeType.INT, chunk=ir.AttributeType.INT, scale=ir.AttributeType.FLOAT)
    return fb.function(OP_TYPE, overload, [q, k, v], outputs, onnx_opset, attrs,
                       doc=f"sliding-window attention |i-j|<={window}, chunk {chunk}")


def make_node(
    model: ir.Model,
    inputs: Sequence[ir.Value],
    *,
    window: int,
    scale: float,
    chunk: int | None = None,
    residual: bool = False,
    group: int = 1,
    name: str | None = None,
) -> ir.Node:
    """Create (not insert) a WindowAttention node and install its function in ``model``."""
    chunk = chunk if chunk is not None else choose_chunk(window)
    onnx_opset = model.opset_imports.get("", 0)
    if onnx_opset < MIN_ONNX_OPSET:
        raise ValueError(f"WindowAttention needs default opset >= {MIN_ONNX_OPSET}, model has {onnx_opset}")
    function = install_function(model, build_function(window, chunk, residual, onnx_opset, group))
    attrs = {"window": window, "chunk": chunk, "scale": float(scale)}
    return ir.Node(GENZIP_DOMAIN, OP_TYPE, list(inputs), ir.convenience.convert_attributes(attrs),
                   overload=function.overload, num_outputs=2 if residual else 1, name=name)
