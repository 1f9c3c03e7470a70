"""``span-attn``: MoA (Mixture of Sparse Attention) per-head span substitution.

Invariant after the pass: every canonical causal self-attention node (the
"layers", numbered 0.. in attention-index order: ``is_causal=1`` without a mask,
or an explicit mask that ``moa_mask`` proves is exactly causal, as torch LM
exports produce; that mask is then dropped) whose spans do not all
cover the sequence has been replaced by ``genzip.SpanAttention``: query i of head h
sees keys j <= i with j < sinks or i - j < span_h, where
``span_h = clamp(round(alpha_h + beta_h·N), max(sinks, 1), N)`` (MoA's elastic
rule) for the node's static sequence length N (or ``seq=`` when N is symbolic).
The new output keeps the old name, dtype and shape; everything else is untouched.
A mask that is causal AND an ``attention_mask`` padding mask (``moa_mask.mask_kind``
``"causal-padding"``) is counted (``causal_padding_masks``) but never dropped, so its
node stays (``skipped_padding_mask``). An attention canonicalize-attn left ``unknown``
makes the pass refuse the model (GenzipError naming it and why); replacing nothing
although the model has attention logs a warning saying why.

On a ``genzip-compile --kv-cache`` graph (K/V read a ``past_key_values.*`` input) the
pass instead keeps ``Attention`` and gives it a per-head span mask computed at run time
from the current length, and makes the cache evicting, sized by ``seq=`` (then required):
with ``evict=head`` (the default) each KV head gets its own cache tensor holding sinks plus
the widest span of the query heads sharing it (``_span_kv_heads``; a layer whose KV heads
all get the same capacity keeps one tensor, which holds just that); with ``evict=layer``
each layer's cache holds sinks plus the layer's widest span (``_span_kv``). kv-quant's
int8 cache (kv-quant before span-attn) is evicted the same way. A cache form it cannot
rewrite is a one-line GenzipError.

``plan=FILE`` gives per-layer, per-head rules as JSON
``{"alphas": [L][H], "betas": [L][H], "sinks": int}``; ``alpha=``/``beta=``/``sinks=``
give one rule for every head.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math

import onnx_ir as ir

from genzip import jsonfile
from genzip.errors import GenzipError
from genzip.passes.attention import _causal_mask as moa_mask
from genzip.passes.attention import _flops as af
from genzip.passes.attention import _span_kv, _span_kv_graph
from genzip.passes.attention._heads import attention_scale, gqa_group
from genzip.passes.infra.context import PassContext
from genzip.passes.infra.contract import GenzipPass, GenzipPassResult
from genzip.plugins import span_attention

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SpanAttentionOptions:
    plan: str | None = None  # JSON plan file; excludes alpha/beta/sinks
    alpha: float | None = None  # span = alpha + beta·N for every head
    beta: float | None = None
    sinks: int | None = None  # always-visible first tokens (default 0)
    seq: int | None = None  # N to resolve spans with when symbolic; a KV-cache graph's longest context
    evict: str = "head"  # KV-cache graphs: each KV head keeps its own span ("head") or the layer's widest ("layer")

    def __post_init__(self):
        uniform = self.alpha is not None or self.beta is not None
        if self.plan is not None and (uniform or self.sinks is not None):
            raise ValueError("give either plan=FILE or alpha=/beta=/sinks=, not both")
        if self.plan is None and not uniform:
            raise ValueError("give plan=FILE or a span rule alpha=A beta=B (span = A + B·N)")
        for name in ("alpha", "beta"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name}={value} must be finite")
        if self.sinks is not None and self.sinks < 0:
            raise ValueError(f"sinks={self.sinks} must be >= 0")
        if self.seq is not None and self.seq < 1:
            raise ValueError(f"seq={self.seq} must be >= 1")
        if self.evict not in ("head", "layer"):
            raise ValueError(f"evict={self.evict} must be head or layer")


@dataclasses.dataclass(frozen=True)
class SpanPlan:
    alphas: list[list[float]]
    betas: list[list[float]]
    sinks: int


def load_plan(path: str) -> SpanPlan:
    """Read and validate a plan file; any problem is a one-line GenzipError."""
    raw = jsonfile.read_json(path, "span-attn plan", 'write {"alphas": [[...]], "betas": [[...]], "sinks": N} '
                             "or run genzip moa-search")
    if not isinstance(raw, dict) or not {"alphas", "betas", "sinks"} <= raw.keys():
        raise GenzipError(f"span-attn: plan '{path}' must be an object with alphas, betas and sinks",
                          'write {"alphas": [[...]], "betas": [[...]], "sinks": N}')
    sinks = raw["sinks"]
    if isinstance(sinks, bool) or not isinstance(sinks, int) or sinks < 0:
        raise GenzipError(f"span-attn: plan '{path}': sinks must be an integer >= 0, got {sinks!r}")
    table = {}
    for key in ("alphas", "betas"):
        rows = raw[key]
        ok = isinstance(rows, list) and all(
            isinstance(r, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                        and math.isfinite(x) for x in r) for r in rows)
        if not ok:
            raise GenzipError(f"span-attn: plan '{path}': {key} must be a list (layers) of lists (heads) of numbers")
        table[key] = [[float(x) for x in r] for r in rows]
    if [len(r) for r in table["alphas"]] != [len(r) for r in table["betas"]]:
        raise GenzipError(f"span-attn: plan '{path}': alphas and betas have different layer/head counts")
    return SpanPlan(table["alphas"], table["betas"], sinks)


def causal_mask_kind(model: ir.Model, node: ir.Node, cache: dict) -> str | None:
    """For a non-``is_causal`` node with an explicit mask: ``"causal"`` when the mask provably
    is the causal mask (torch LM exports), ``"causal-padding"`` when it is causal AND a key
    padding mask read from an ``attention_mask`` input (see ``_causal_mask``), else None."""
    if node.attributes.get_int("is_causal", 0) or len(node.inputs) < 4 or node.inputs[3] is None:
        return None
    q, k = node.inputs[0], node.inputs[1]
    if q.shape is None or k.shape is None or len(q.shape) != 4 or len(k.shape) != 4:
        return None
    n = q.shape[2]
    if not isinstance(n, int) or k.shape[2] != n:
        return None
    return moa_mask.mask_kind(model, node.inputs[3], n, cache)


def _has_causal_mask(model: ir.Model, node: ir.Node, cache: dict) -> bool:
    """A non-``is_causal`` node whose explicit mask provably is the causal mask (torch LM exports)."""
    return causal_mask_kind(model, node, cache) == moa_mask.CAUSAL


def resolve_span(alpha: float, beta: float, n: int, sinks: int) -> int:
    """MoA's elastic rule ``round(alpha + beta·n)`` clamped to ``[max(sinks, 1), n]``.

    The one place the rule lives: ``moa-search`` profiles exactly the spans this pass builds.
    """
    return min(n, max(sinks, 1, round(alpha + beta * n)))


class SpanAttentionPass(GenzipPass):
    name = "span-attn"
    Options = SpanAttentionOptions
    summary = "replace causal self-attention with per-head span genzip.SpanAttention (MoA)"
    requires_facts = frozenset({"attention-canonical"})
    transforming = True

    def static_axes(self) -> dict[str, str]:
        return {"seq": "its per-head spans are resolved against the static sequence length"}

    def _rules(self, layers: list[af.AttentionSite]) -> tuple[list[list[tuple[float, float]]], int]:
        """Per layer, per head (alpha, beta); and the sink count."""
        heads = [s.node.inputs[0].shape[1] if s.node.inputs[0].shape is not None else None for s in layers]
        for site, h in zip(layers, heads):
            if not isinstance(h, int):
                raise GenzipError(f"span-attn: causal attention {site.index} has no static head count",
                                  "export with static head dims")
        opts = self.options
        if opts.plan is None:
            rule = (opts.alpha or 0.0, opts.beta or 0.0)
            return [[rule] * h for h in heads], opts.sinks or 0
        plan = load_plan(opts.plan)
        if len(plan.alphas) != len(layers):
            raise GenzipError(f"span-attn: plan '{opts.plan}' has {len(plan.alphas)} layers but the model has "
                              f"{len(layers)} causal self-attention layers", "use a plan made for this model")
        for layer, (row, h) in enumerate(zip(plan.alphas, heads)):
            if len(row) != h:
                raise GenzipError(f"span-attn: plan '{opts.plan}' layer {layer} has {len(row)} heads but attention "
                                  f"{layers[layer].index} has {h}", "use a plan made for this model")
        return [list(zip(a, b)) for a, b in zip(plan.alphas, plan.betas)], plan.sinks

    def run(self, model: ir.Model, context: PassContext) -> GenzipPassResult:
        sites = af.attention_sites(model)
        af.refuse_unknown(sites, "span-attn", "span-attn needs every attention classified; re-export the model "
                          "so self attention reads Q's activation, or leave span-attn out")
        kv_layers = [s for s in sites if s.kind == "self" and _span_kv.reads_past(s.node, model.graph)]
        if kv_layers:
            return self._run_kv_cache(model, kv_layers)
        cache: dict = {}  # masks are shared by all layers: prove each once
        mask_kinds = {id(s.node): causal_mask_kind(model, s.node, cache) for s in sites if s.kind == "self"}
        masked = {i for i, kind in mask_kinds.items() if kind == moa_mask.CAUSAL}
        padded = {i for i, kind in mask_kinds.items() if kind == moa_mask.CAUSAL_PADDING}
        layers = [s for s in sites if s.kind == "self"
                  and (s.node.attributes.get_int("is_causal", 0) or id(s.node) in masked)]
        flops = {id(s.node): af.canonical_attention_flops(s.node) for s in sites}
        before = sum(f or 0 for f in flops.values())
        rules, sinks = self._rules(layers)
        skipped: collections.Counter[str] = collections.Counter()
        replaced = 0
        for site, rule in zip(layers, rules):
            if id(site.node) in masked:
                reason = af.unsupported_reason(site.node, causal=False, mask_ok=True)
            else:
                reason = af.unsupported_reason(site.node, causal=True)
            if reason is None:
                reason = self._replace(model, site, rule, sinks, flops)
            if reason:
                skipped[reason] += 1
                logger.info("span-attn: attention %d (%s) left alone: %s", site.index, site.node.name, reason)
            else:
                replaced += 1
        known = [f for f in flops.values() if f is not None]
        stats = {
            "nodes_replaced": replaced, "attn_flops_before": before, "attn_flops_after": sum(known),
            "flops_unknown_nodes": len(flops) - len(known), "sinks": sinks,
            "causal_masks_recognized": len(masked),
        }
        if padded:
            # Causal, but the padding part must stay: SpanAttention takes no mask.
            stats["causal_padding_masks"] = len(padded)
            skipped["padding-mask"] += len(padded)
        stats.update({f"skipped_{k.replace('-', '_')}": c for k, c in sorted(skipped.items())})
        why = None
        if not replaced:
            not_causal = sum(1 for s in sites if s.kind == "self") - len(layers) - len(padded)
            why = af.no_op_reason("span-attn", model, sites,
                                  {**skipped, **({"not causal": not_causal} if not_causal else {})},
                                  wanted="causal self-attention")
        return GenzipPassResult(model, replaced > 0, stats, noop_reason=why)

    def _run_kv_cache(self, model: ir.Model, layers: list[af.AttentionSite]) -> GenzipPassResult:
        """A ``--kv-cache`` graph: run-time elastic spans and a per-layer evicting cache (``_span_kv``)."""
        seq = self.options.seq
        if seq is None:
            raise GenzipError("span-attn: a KV-cache graph needs seq=N, the longest context it will serve "
                              "(it sizes each layer's evicting cache)", "give span-attn{... seq=N}")
        found = []
        for site in layers:
            kv = _span_kv.kv_site(site.node, model.graph)
            if isinstance(kv, str) or not _span_kv.static_gqa(kv):
                why = kv if isinstance(kv, str) else "its head counts are not static"
                raise GenzipError(f"span-attn: KV-cache attention {site.index} ({site.node.name}): {why}",
                                  "span-attn handles the float32 Concat(past, new) cache of genzip-compile --kv-cache")
            found.append(kv)
        rules, sinks = self._rules(layers)
        per_head = self.options.evict == "head"
        pasts = [(kv.caches[0].inputs[0].name, _span_kv.heads_of(kv.caches[0].inputs[0])) for kv in found]
        caps = _span_kv_graph.rewrite_kv_graph(model, found, rules, sinks, seq, per_head)
        # Per layer: the K cache's capacity per KV head (the layer's one capacity where not split).
        per_layer = [[caps[name]] * heads if name in caps else [caps[_span_kv.head_name(name, g)] for g in range(heads)]
                     for name, heads in pasts]
        held = sum(sum(row) for row in per_layer)
        stats = {"nodes_replaced": len(found), "kv_cache": True, "sinks": sinks, "seq": seq, "evict": self.options.evict,
                 "kv_capacity": per_layer,
                 "kv_bytes_ratio_at_seq": round(held / (sum(len(row) for row in per_layer) * seq), 4)}
        return GenzipPassResult(model, True, stats)

    def _replace(self, model, site: af.AttentionSite, rule, sinks: int, flops: dict) -> str | None:
        node = site.node
        q, k, v = node.inputs[:3]
        n_static = q.shape[2]
        n = n_static if isinstance(n_static, int) else self.options.seq
        if n is None:
            raise GenzipError(f"span-attn: attention {site.index} has symbolic sequence length '{n_static}'",
                              "give seq=N to resolve the spans, or export with a static length")
        spans = [resolve_span(a, b, n, sinks) for a, b in rule]
        if isinstance(n_static, int) and min(spans) >= n:
            return "span-covers-sequence"
        if gqa_group(node) is None:
            return "head-count"
        hkv = k.shape[1]
        scale = attention_scale(node)
        if scale is None:
            return "unknown-scale"
        new = span_attention.make_node(model, [q, k, v], spans=spans, sinks=sinks, scale=scale, kv_heads=hkv,
                                       name=f"{node.name or 'attention'}_span")
        new.metadata_props.update(node.metadata_props)
        ir.convenience.replace_nodes_and_values(node.graph, node, [node], [new], [node.outputs[0]], [new.outputs[0]])
        flops[id(node)] = (af.restricted_flops(q, v, [af.span_pairs(n, s, sinks) for s in spans])
                           if isinstance(n_static, int) else None)
        return None
