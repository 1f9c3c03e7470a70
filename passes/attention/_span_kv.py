"""``span-attn`` on ``--kv-cache`` graphs: elastic per-head spans and an evicting cache.

The form handled is the one ``genzip-compile --kv-cache`` writes: per layer,
``K = Concat(past_key_values.{i}.key, k_new, axis=2)`` (same for V) is both the graph
output ``present.{i}.key`` and input 1 (2) of a canonical self ``Attention(Q, K, V,
mask)``; the graph has an ``attention_mask`` input ``[batch, N]`` whose length N is the
total number of tokens seen (past + new), whatever the cache holds.

Per layer the rewrite does two things.

* **Elastic spans.** The mask becomes, per query head h, ``[1, Hq, S, L]`` (S new
  queries, L = P + S keys of the Concat, P the stored past): query i (absolute position
  ``pq = T0 + i``, ``T0 = N - S``) sees key j (absolute position ``pk(j) = j`` for ``j <
  sinks``, else ``j + T0 - P``) iff ``pk <= pq`` and (``pk < sinks`` or ``pq - pk <
  span_h(pq + 1)``), with ``span_h(n) = clamp(round(alpha_h + beta_h·n), max(sinks, 1),
  n)`` evaluated at run time (float64, round-half-even, as ``resolve_span``) at each
  query's own length ``n = pq + 1``: in a decode step that is N, the current total, and
  a prefill gives every query the span it would have had decoded one token at a time
  (MoA's reference does the same: ``effective_length = query_index + 1``), so chunked
  and token-by-token runs agree. The
  old mask (causal + ``attention_mask`` padding) is dropped: the values of
  ``attention_mask`` are no longer read, only its length (``generate()`` binds ones).
* **Eviction.** ``present`` becomes ``Gather(K, idx, axis=2)`` with at most ``C``
  entries: ``idx = j`` for ``j < sinks``, else ``j + max(L - C, 0)``, ``j < min(L,
  C)``: the sinks plus the newest ``C - sinks`` tokens. ``C = sinks + max_h max_{N <=
  seq} span_h(N)`` is the layer's capacity (one tensor per layer, so every KV head of
  a layer holds ``C`` tokens; layers differ). By induction the stored cache always is
  ``min(T, C)`` tokens laid out as ``pk`` says, so for ``N <= seq`` every key a head's
  span reaches is still stored and the result equals span attention over a dense cache.

The driver over all layers is ``_span_kv_graph``; ``evict=head`` splits per KV head
(``_span_kv_heads``).

Invariant: the capacities are recorded in the model metadata (``KV_CAPACITY_KEY``:
JSON ``{past input name: C}``) and the runtime sizes and binds each cache tensor by
it; nothing else in the graph may read a past input (checked: otherwise the pass
refuses the graph in one line).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from genzip.errors import GenzipError
from genzip.ir_build import NodeBuilder

PAST_PREFIX, PRESENT_PREFIX = "past_key_values.", "present."
MASK_INPUT = "attention_mask"


# Per-token elementwise ops between a cache Concat and Attention's K/V: kv-quant's
# dequantization ``Mul(Cast<float>(int8 rows), scales)``. Eviction gathers tokens, so it
# commutes with them; anything else (a Reshape of heads, a Transpose) is refused.
CHAIN_OPS = frozenset({"Cast", "Mul"})


@dataclasses.dataclass(frozen=True)
class KVSite:
    """One layer's attention, the cache updates ``Concat(past, new)`` its K and V are computed
    from (K and V; with kv-quant also their scales), and the ``CHAIN_OPS`` nodes in between,
    in graph order."""

    node: ir.Node
    caches: tuple[ir.Node, ...]
    chain: tuple[ir.Node, ...] = ()


def _cache_concat(value: ir.Value, graph_inputs: set[int]) -> ir.Node | None:
    node = value.producer()
    if node is None or node.op_type != "Concat" or len(node.inputs) != 2:
        return None
    past = node.inputs[0]
    if id(past) not in graph_inputs or not (past.name or "").startswith(PAST_PREFIX):
        return None
    return node if node.attributes.get_int("axis", 0) in (2, -2) else None


def _trace(value: ir.Value, inputs: set[int], caches: list, chain: list) -> str | None:
    """Collect the cache Concats and chain nodes ``value`` is computed from; or why not."""
    concat = _cache_concat(value, inputs)
    if concat is not None:
        if concat not in caches:
            caches.append(concat)
        return None
    node = value.producer()
    if node is None or node.op_type not in CHAIN_OPS:
        return "its K/V are not Concat(past_key_values.*, new) (optionally dequantized by kv-quant)"
    for v in node.inputs:
        why = _trace(v, inputs, caches, chain) if v is not None else None
        if why:
            return why
    if node not in chain:
        chain.append(node)
    return None


def reads_past(node: ir.Node, graph: ir.Graph) -> bool:
    """Whether K or V of ``node`` depends on a ``past_key_values.*`` input (a cache graph)."""
    seen, stack = set(), [v for v in node.inputs[1:3] if v is not None]
    inputs = {id(v) for v in graph.inputs}
    while stack:
        value = stack.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        if id(value) in inputs:
            if (value.name or "").startswith(PAST_PREFIX):
                return True
            continue
        producer = value.producer()
        if producer is not None:
            stack.extend(v for v in producer.inputs if v is not None)
    return False


def kv_site(node: ir.Node, graph: ir.Graph) -> KVSite | str:
    """The cache updates of ``node``, or why this KV-cache form cannot be handled."""
    inputs = {id(v) for v in graph.inputs}
    caches: list[ir.Node] = []
    chain: list[ir.Node] = []
    for i in (1, 2):
        why = _trace(node.inputs[i], inputs, caches, chain)
        if why:
            return why
    outputs = {id(v) for v in graph.outputs}
    for concat in caches:
        if id(concat.outputs[0]) not in outputs or not (concat.outputs[0].name or "").startswith(PRESENT_PREFIX):
            return f"'{concat.inputs[0].name}' is not written back as a present.* output"
    for c in chain:
        for out in c.outputs:
            if id(out) in outputs or any(user is not node and user not in chain for user, _ in out.uses()):
                return f"the dequantized cache '{out.name}' is read outside attention"
    order = {id(n): i for i, n in enumerate(graph)}
    return KVSite(node, tuple(caches), tuple(sorted(chain, key=lambda n: order[id(n)])))


def static_gqa(site: KVSite) -> bool:
    """Query and KV head counts are static and the query heads group evenly over the KV heads."""
    q, past = site.node.inputs[0].shape, site.caches[0].inputs[0].shape
    if q is None or past is None or len(q) != 4 or len(past) != 4:
        return False
    hq, hkv = q[1], past[1]
    return isinstance(hq, int) and isinstance(hkv, int) and hkv > 0 and hq % hkv == 0


def capacity(rule: list[tuple[float, float]], sinks: int, seq: int) -> int:
    """Tokens one layer's cache keeps: sinks + the widest span any head reaches for N <= seq."""
    n = np.arange(1, seq + 1, dtype=np.float64)
    widest = 1
    for alpha, beta in rule:
        spans = np.minimum(n, np.maximum(max(sinks, 1), np.round(alpha + beta * n)))
        widest = max(widest, int(spans.max()))
    return min(seq, sinks + widest)


class Shared:
    """Per-graph values every layer reuses: N (the total length, int64 scalar), 0 and 1."""

    def __init__(self, graph: ir.Graph, b: NodeBuilder):
        mask = next((v for v in graph.inputs if v.name == MASK_INPUT), None)
        if mask is None:
            raise GenzipError("span-attn: the KV-cache graph has no attention_mask input to read the length N from",
                              "compile the model with genzip-compile FOLDER --kv-cache")
        self.n = b.op("Squeeze", b.op("Gather", b.op("Shape", mask), b.ints(1), axis=0), b.ints(0))
        self.zero, self.one = b.const(0), b.const(1)


def axis_len(b: NodeBuilder, value: ir.Value, axis: int) -> ir.Value:
    """``value.shape[axis]`` as an int64 scalar."""
    return b.op("Squeeze", b.op("Gather", b.op("Shape", value), b.ints(axis), axis=0), b.ints(0))


def span_mask(b: NodeBuilder, shared: Shared, s: ir.Value, p: ir.Value, rule: list[tuple[float, float]],
              sinks: int) -> tuple[ir.Value, ir.Value]:
    """(mask ``[1, len(rule), S, L]``, L) for ``S`` new queries over a cache of ``p`` stored
    tokens laid out as the module docstring's ``pk`` says (sinks, then the newest)."""
    length = b.op("Add", p, s)
    t0 = b.op("Sub", shared.n, s)
    sinks_c = b.const(sinks)
    j = b.op("Range", shared.zero, length, shared.one)
    pk = b.op("Where", b.op("Less", j, sinks_c), j, b.op("Add", j, b.op("Sub", t0, p)))
    pq = b.op("Add", b.op("Range", shared.zero, s, shared.one), t0)
    diff = b.op("Sub", b.op("Unsqueeze", pq, b.ints(1)), b.op("Unsqueeze", pk, b.ints(0)))  # [S, L]
    # Per query: its own length n = pq + 1 (what N was when that token was, or will be, decoded).
    n = b.op("Add", pq, shared.one)  # [S]
    n_f = b.op("Unsqueeze", b.op("Cast", n, to=ir.DataType.DOUBLE), b.ints(0))  # [1, S]
    alphas = b.const([[a] for a, _ in rule], np.float64)  # [H, 1]
    betas = b.const([[bb] for _, bb in rule], np.float64)
    raw = b.op("Cast", b.op("Round", b.op("Add", alphas, b.op("Mul", betas, n_f))), to=ir.DataType.INT64)
    span = b.op("Min", b.op("Max", raw, b.const(max(sinks, 1))), b.op("Unsqueeze", n, b.ints(0)))  # [H, S]
    in_span = b.op("Less", b.op("Unsqueeze", diff, b.ints(0)), b.op("Unsqueeze", span, b.ints(2)))  # [H, S, L]
    sink = b.op("Unsqueeze", b.op("Less", pk, sinks_c), b.ints(0, 1))  # [1, 1, L]
    causal = b.op("Unsqueeze", b.op("GreaterOrEqual", diff, shared.zero), b.ints(0))  # [1, S, L]
    return b.op("Unsqueeze", b.op("And", causal, b.op("Or", sink, in_span)), b.ints(0)), length


def evict_index(b: NodeBuilder, shared: Shared, length: ir.Value, cap: int, sinks: int) -> ir.Value:
    """Indices (axis 2) of what a cache of ``cap`` keeps of ``length`` tokens: the sinks and the newest."""
    cap_c = b.const(cap)
    kept = b.op("Range", shared.zero, b.op("Min", length, cap_c), shared.one)
    shift = b.op("Max", b.op("Sub", length, cap_c), shared.zero)
    return b.op("Where", b.op("Less", kept, b.const(sinks)), kept, b.op("Add", kept, shift))


def rewrite_layer(graph: ir.Graph, site: KVSite, rule: list[tuple[float, float]], sinks: int, cap: int,
                   shared: Shared, b: NodeBuilder) -> dict[str, int]:
    """``evict=layer``: one mask for the layer, every cache tensor keeps ``cap`` tokens."""
    s = axis_len(b, site.node.inputs[0], 2)
    p = axis_len(b, site.caches[0].inputs[0], 2)
    mask, length = span_mask(b, shared, s, p, rule, sinks)
    idx = evict_index(b, shared, length, cap, sinks)
    site.node.replace_input_with(3, mask)
    evicted = [b.op("Gather", concat.outputs[0], idx, axis=2) for concat in site.caches]
    graph.insert_before(site.node, b.nodes)
    b.nodes.clear()
    for concat, new in zip(site.caches, evicted):
        out = concat.outputs[0]
        name, shape, dtype = out.name, out.shape, out.dtype
        graph.outputs[list(graph.outputs).index(out)] = new
        out.name = f"{name}.full"
        new.name, new.dtype = name, dtype
        new.shape = ir.Shape([shape[0], shape[1], "kv_kept", shape[3]]) if shape is not None else None
    return {concat.inputs[0].name: cap for concat in site.caches}


def head_name(name: str, head: int) -> str:
    """``past_key_values.{i}.{rest}`` -> ``past_key_values.{i}.h{head}.{rest}`` (same for
    ``present.``): KV head ``head``'s own cache tensor, paired past/present by the same rest."""
    prefix = PAST_PREFIX if name.startswith(PAST_PREFIX) else PRESENT_PREFIX
    layer, rest = name[len(prefix):].split(".", 1)
    return f"{prefix}{layer}.h{head}.{rest}"


def heads_of(value: ir.Value) -> int:
    return int(value.shape[1])


def _reads_length(shape: ir.Node) -> bool:
    """Whether a ``Shape`` of a rank-4 past includes axis 2 (the token count); batch is fine."""
    start = shape.attributes.get_int("start", 0) % 4
    end = shape.attributes.get_int("end", 4)
    end = end % 4 if end < 0 else min(end, 4)
    return start <= 2 < end


def check_past_readers(graph: ir.Graph) -> None:
    """Past inputs are now shorter than the history: nothing but the cache update and the
    new span mask may read them (the exporter's old mask read layer 0's past length)."""
    for value in graph.inputs:
        if not (value.name or "").startswith(PAST_PREFIX):
            continue
        for user, _ in value.uses():
            if user.op_type == "Concat" or (user.op_type == "Shape" and (
                    (user.name or "").startswith("span_kv") or not _reads_length(user))):
                continue
            raise GenzipError(f"span-attn: '{value.name}' is read by {user.op_type} '{user.name}', which would see "
                              "the evicted (shorter) cache", "this KV-cache form is not supported by span-attn")
