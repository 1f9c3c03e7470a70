"""Shape and dtype inference for the genzip custom ops, in plain Python.

Invariant: these functions are the single statement of each op's output
shapes/dtypes; the ONNX passes and the TensorRT plugin both call them. A dim is
an ``int`` (static), a ``str`` (symbolic), ``None`` (unknown) or any other object
(e.g. a TensorRT ``ShapeExpr``), which is passed through as is. Two dims conflict
only when both are ints and differ; otherwise an int wins, then the first known.
``*_shapes`` return shapes only; ``window_attention``/``span_attention`` also
validate attributes and infer the dtype.
Inputs that can never be valid raise ``ShapeError`` naming the op and the input.
"""

from __future__ import annotations

from collections.abc import Sequence

Dim = int | str | None
Shape = tuple[Dim, ...]

FLOAT_DTYPES = frozenset({"float32", "float16", "bfloat16", "float64"})


class ShapeError(ValueError):
    """Input shapes or dtypes the op cannot accept."""


def _merge(a: Dim, b: Dim, what: str) -> Dim:
    if isinstance(a, int) and isinstance(b, int) and a != b:
        raise ShapeError(f"{what}: {a} != {b}")
    if isinstance(a, int):
        return a
    if isinstance(b, int):
        return b
    return a if a is not None else b


def _rank4(op: str, name: str, shape: Sequence[Dim] | None) -> Shape:
    if shape is None:
        return (None, None, None, None)
    if len(shape) != 4:
        raise ShapeError(f"{op}: input {name} must be 4-D [B, H, N, D], got rank {len(shape)}")
    for d in shape:
        if isinstance(d, int) and d < 0:
            raise ShapeError(f"{op}: input {name} has negative dim {d}")
    return tuple(shape)


def _dtype(op: str, dtypes: Sequence[str | None]) -> str | None:
    known = {d for d in dtypes if d is not None}
    if len(known) > 1:
        raise ShapeError(f"{op}: q, k, v must share one dtype, got {sorted(known)}")
    dtype = known.pop() if known else None
    if dtype is not None and dtype not in FLOAT_DTYPES:
        raise ShapeError(f"{op}: dtype {dtype} is not a floating type")
    return dtype


def _attention(op: str, q: Sequence[Dim] | None, k: Sequence[Dim] | None, v: Sequence[Dim] | None) -> Shape:
    """Common checks of self-attention q [B,Hq,N,D], k [B,Hkv,N,D], v [B,Hkv,N,Dv]."""
    q4, k4, v4 = _rank4(op, "q", q), _rank4(op, "k", k), _rank4(op, "v", v)
    b = _merge(_merge(q4[0], k4[0], f"{op}: batch of q vs k"), v4[0], f"{op}: batch of q vs v")
    hkv = _merge(k4[1], v4[1], f"{op}: heads of k vs v")
    n = _merge(_merge(q4[2], k4[2], f"{op}: sequence of q vs k (self-attention)"), v4[2],
               f"{op}: sequence of q vs v (self-attention)")
    _merge(q4[3], k4[3], f"{op}: head dim of q vs k")
    hq = q4[1]
    if isinstance(hq, int) and isinstance(hkv, int) and (hkv == 0 or hq % hkv):
        raise ShapeError(f"{op}: query heads {hq} not a multiple of key/value heads {hkv}")
    return (b, hq, n, v4[3])


def window_attention_shapes(q, k, v, *, residual: bool = False, **_attrs) -> list[Shape]:
    """Output shapes of ``genzip.WindowAttention``: Y (and R when ``residual``), [B, Hq, N, Dv].

    Dims are passed through untouched unless known ints disagree, so this also
    works on TensorRT's symbolic ``ShapeExpr`` dims.
    """
    shape = _attention("WindowAttention", q, k, v)
    return [shape, shape] if residual else [shape]


def span_attention_shapes(q, k, v, *, spans: Sequence[int] | None = None, **_attrs) -> list[Shape]:
    """Output shape of ``genzip.SpanAttention``: Y [B, Hq, N, Dv] (Hq == len(spans) when given)."""
    op = "SpanAttention"
    shape = _attention(op, q, k, v)
    if spans is None:
        return [shape]
    heads = _merge(shape[1], len(spans), f"{op}: query heads vs len(spans)")
    hkv = None if k is None else k[1]
    if isinstance(hkv, int) and (hkv == 0 or len(spans) % hkv):
        raise ShapeError(f"{op}: {len(spans)} spans not a multiple of key/value heads {hkv}")
    return [(shape[0], heads, shape[2], shape[3])]


def window_attention(
    q: Sequence[Dim] | None,
    k: Sequence[Dim] | None,
    v: Sequence[Dim] | None,
    dtypes: Sequence[str | None] = (None, None, None),
    *,
    window: int,
    chunk: int,
    residual: bool = False,
) -> list[tuple[Shape, str | None]]:
    """Validated attributes, then (shape, dtype) of each WindowAttention output."""
    op = "WindowAttention"
    if window < 0:
        raise ShapeError(f"{op}: window must be >= 0, got {window}")
    if chunk < 1:
        raise ShapeError(f"{op}: chunk must be >= 1, got {chunk}")
    dtype = _dtype(op, dtypes)
    return [(shape, dtype) for shape in window_attention_shapes(q, k, v, residual=residual)]


def span_attention(
    q: Sequence[Dim] | None,
    k: Sequence[Dim] | None,
    v: Sequence[Dim] | None,
    dtypes: Sequence[str | None] = (None, None, None),
    *,
    spans: Sequence[int],
    sinks: int,
) -> list[tuple[Shape, str | None]]:
    """Validated attributes, then (shape, dtype) of the SpanAttention output."""
    op = "SpanAttention"
    if not spans or min(spans) < 1:
        raise ShapeError(f"{op}: spans must be a non-empty list of ints >= 1, got {list(spans)}")
    if sinks < 0:
        raise ShapeError(f"{op}: sinks must be >= 0, got {sinks}")
    dtype = _dtype(op, dtypes)
    return [(shape, dtype) for shape in span_attention_shapes(q, k, v, spans=spans)]
