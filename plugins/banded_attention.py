"""The chunked banded attention body shared by WindowAttention and SpanAttention.

Invariant: for query ``i`` and key ``j`` (both < N, N read at run time with Shape),
the emitted subgraph computes softmax attention over exactly the keys with
``-left <= j - i <= right`` plus, when ``sinks > 0``, the keys ``j < sinks`` with
``j < i - left`` (below the band, so no key counts twice); every other key is
masked out before the softmax.

How it stays O(N·(left + right + C)) instead of O(N²): Q, K, V are zero-padded to
``nC·C`` and split into chunks of ``C`` positions. Query chunk ``c`` sees the key
chunks ``c - ceil(left/C) .. c + ceil(right/C)`` (plus the chunks holding the
sinks), gathered whole (``Gather`` on the chunk axis copies C·D blocks, far
cheaper than row gathers); indices off either end are clamped and masked. The
chunks become the head axis of one standard ``Attention`` call
(``[B·Hkv, nC·G, C, D]`` queries against ``[B·Hkv, nC, Klen, D]`` keys, an additive
mask ``[nC·G, C, Klen]`` built from global positions), which ORT runs per head
(GEMM, mask, softmax, GEMM) on C x Klen blocks. GQA (``G`` query heads per KV
head) uses Attention's own head grouping, so K/V are never repeated per query head.

No valid query row is ever fully masked (it always sees itself); the mask value
is finite, so padded query rows, which may be, get uniform weights instead of
NaN in float32; they are sliced off either way.
"""

from __future__ import annotations

import onnx_ir as ir

from genzip.plugins.onnx_fn import FnBuilder

_MASKED = -1e30
MIN_CHUNK, MAX_CHUNK = 32, 256


def choose_chunk(band: int) -> int:
    """Query chunk size C for a band of ``band`` keys besides the query itself.

    A chunk of C queries computes ``C + band`` keys, so compute waste grows like
    ``C / band``, while the gather copies (``band / C`` copies of K and V) and ORT's
    per-head overhead shrink as C grows. Measured with ``benchmarks/bench_attention.py``
    (ORT CPU, 2 threads) the optimum is flat around ``C ≈ band / 4`` (``w / 2`` for a
    two-sided window: w=256 -> 128 was 10% faster than 64; w=512: 128, 171 and 256
    within noise; w=2048: 256 beat 128 and 512), so: the power of two at or above
    ``band / 4``, clamped to [32, 256] (smaller chunks lose to per-head overhead).
    """
    if band < 0:
        raise ValueError(f"band must be >= 0, got {band}")
    target = max(1, band // 4)
    chunk = 1 << (target - 1).bit_length()
    return max(MIN_CHUNK, min(MAX_CHUNK, chunk))


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _pad_seq(fb: FnBuilder, x: ir.Value, tail: ir.Value) -> ir.Value:
    """Zero-pad axis 2 of a [B, H, N, D] tensor by ``tail`` at the end."""
    pads = fb.op("Concat", fb.ints(0, 0, 0, 0, 0, 0), tail, fb.ints(0), axis=0)
    return fb.op("Pad", x, pads)


def banded_attention(
    fb: FnBuilder,
    q: ir.Value,
    k: ir.Value,
    v: ir.Value,
    scale: ir.Attr,
    *,
    chunk: int,
    left: int,
    right: int,
    sinks: int = 0,
    group: int = 1,
) -> ir.Value:
    """Emit banded attention for q [B, G·Hkv, N, D], k [B, Hkv, N, D], v [B, Hkv, N, Dv].

    ``group`` = G query heads per KV head (query head h uses KV head h // G).
    ``scale`` is the float attribute (usually a reference) given to Attention.
    Returns Y [B, G·Hkv, N, Dv].
    """
    if chunk < 1 or left < 0 or right < 0 or sinks < 0 or group < 1:
        raise ValueError(f"bad band: chunk={chunk} left={left} right={right} sinks={sinks} group={group}")
    offsets = list(range(-_ceil_div(left, chunk), _ceil_div(right, chunk) + 1))
    sink_chunks = list(range(_ceil_div(sinks, chunk)))
    klen = chunk * (len(sink_chunks) + len(offsets))

    n = fb.op("Shape", q, start=2, end=3)  # [1]
    n_chunks = fb.op("Div", fb.op("Add", n, fb.ints(chunk - 1)), fb.ints(chunk))
    n_padded = fb.op("Mul", n_chunks, fb.ints(chunk))
    tail = fb.op("Sub", n_padded, n)
    bh = fb.op("Shape", q, start=0, end=2)  # [B, Hq]
    d_q, d_v = fb.op("Shape", q, start=3), fb.op("Shape", v, start=3)

    # Queries -> [B·Hkv, nC·G, C, D] with head index c·G + g, the order Attention's
    # GQA grouping (head // G) maps onto key chunk c.
    qp = _pad_seq(fb, q, tail)
    if group == 1:
        qc = fb.op("Reshape", qp, fb.op("Concat", fb.ints(-1), n_chunks, fb.ints(chunk), d_q, axis=0))
    else:
        q6 = fb.op("Reshape", qp, fb.op("Concat", fb.ints(0, -1, group), n_chunks, fb.ints(chunk), d_q, axis=0))
        q6 = fb.op("Transpose", q6, perm=[0, 1, 3, 2, 4, 5])
        qc = fb.op("Reshape", q6, fb.op("Concat", fb.ints(-1), fb.op("Mul", n_chunks, fb.ints(group)),
                                        fb.ints(chunk), d_q, axis=0))

    # Key chunk table [nC, Kc]: sink chunks first, then the band around chunk c.
    zero = fb.const(0)
    starts = fb.op("Range", zero, fb.op("Squeeze", n_chunks), fb.const(1))  # [nC]
    band = fb.op("Add", fb.op("Unsqueeze", starts, fb.ints(1)), fb.ints(*offsets))  # [nC, nb]
    table = band
    if sink_chunks:
        sink_tab = fb.op("Expand", fb.const([sink_chunks]),
                         fb.op("Concat", n_chunks, fb.ints(len(sink_chunks)), axis=0))
        table = fb.op("Concat", sink_tab, band, axis=1)
    clamped = fb.op("Clip", table, zero, fb.op("Sub", fb.op("Squeeze", n_chunks), fb.const(1)))

    def gather(x: ir.Value, d: ir.Value) -> ir.Value:
        x4 = fb.op("Reshape", _pad_seq(fb, x, tail),
                   fb.op("Concat", fb.ints(-1), n_chunks, fb.ints(chunk), d, axis=0))
        xg = fb.op("Gather", x4, clamped, axis=1)  # [B·Hkv, nC, Kc, C, D]
        return fb.op("Reshape", xg, fb.op("Concat", fb.ints(0, 0, -1), d, axis=0))

    kg, vg = gather(k, d_q), gather(v, d_v)

    # Additive float mask [nC·G, C, Klen] (0 or _MASKED). Within the band, j - i =
    # o·C + t - a does not depend on the chunk c, so the band test is a [C, Kb]
    # table; key range validity is [nC, 1, Klen]; one broadcast Add joins them
    # (a big Where or ORT's own bool-mask conversion is single-threaded and ~8x slower).
    zero_f, masked = fb.scalar(0.0), fb.scalar(_MASKED)
    t = fb.const(list(range(chunk)))
    a = fb.const([[x] for x in range(chunk)])  # [C, 1]
    rel = fb.op("Sub", fb.const([o * chunk + x for o in offsets for x in range(chunk)]), a)  # [C, Kb]
    band_ok = fb.op("And", fb.op("GreaterOrEqual", rel, fb.const(-left)), fb.op("LessOrEqual", rel, fb.const(right)))
    band_f = fb.op("Where", band_ok, zero_f, masked)
    j = fb.op("Reshape", fb.op("Add", fb.op("Unsqueeze", fb.op("Mul", table, fb.const(chunk)), fb.ints(2)), t),
              fb.op("Concat", n_chunks, fb.ints(1, klen), axis=0))  # unclamped key positions [nC, 1, Klen]
    key_ok = fb.op("And", fb.op("GreaterOrEqual", j, zero), fb.op("Less", j, n))
    if sink_chunks:
        # Sinks count only strictly below the band, so no key is counted twice;
        # that also keeps them inside [0, i), so no range test is needed.
        n_sink_cols = chunk * len(sink_chunks)
        i = fb.op("Reshape", fb.op("Range", zero, fb.op("Squeeze", n_padded), fb.const(1)), fb.ints(-1, chunk, 1))
        j_sink = fb.const([s * chunk + x for s in sink_chunks for x in range(chunk)])  # [Ks]
        sink_ok = fb.op("And", fb.op("Less", j_sink, fb.const(sinks)),
                        fb.op("Less", fb.op("Sub", j_sink, i), fb.const(-left)))  # [nC, C, Ks]
        key_band = fb.op("Slice", key_ok, fb.ints(n_sink_cols), fb.ints(klen), fb.ints(2))
        band_part = fb.op("Add", band_f, fb.op("Where", key_band, zero_f, masked))
        bias = fb.op("Concat", fb.op("Where", sink_ok, zero_f, masked), band_part, axis=2)
    else:
        bias = fb.op("Add", band_f, fb.op("Where", key_ok, zero_f, masked))
    # Padded query rows (i >= N) may end up fully masked: with a finite _MASKED they
    # get uniform weights, not NaN, and they are sliced off below.
    bias = fb.op("CastLike", bias, q)
    if group > 1:
        bias = fb.op("Expand", fb.op("Unsqueeze", bias, fb.ints(1)), fb.ints(1, group, 1, 1))
        bias = fb.op("Reshape", bias, fb.ints(-1, chunk, klen))

    y = fb.op("Attention", qc, kg, vg, bias, scale=scale)  # [B·Hkv, nC·G, C, Dv]
    if group > 1:
        y6 = fb.op("Reshape", y, fb.op("Concat", fb.ints(-1), n_chunks, fb.ints(group, chunk), d_v, axis=0))
        y = fb.op("Transpose", y6, perm=[0, 2, 1, 3, 4])  # [B·Hkv, G, nC, C, Dv]
    flat = fb.op("Reshape", y, fb.op("Concat", bh, fb.ints(-1), d_v, axis=0))
    return fb.op("Slice", flat, fb.ints(0), n, fb.ints(2))
