"""``window-attn``: sliding-window attention substitution (DiTFastAttn's window, no residual).

This is plain window attention: it does not add WA-RS's residual ``full − window``
back (there is no earlier step to cache it from in a single-call graph). DiTFastAttn's
WA-RS, with the residual cached at a full step and added on later steps, is
``share-attn``'s mode 2; ``residual=true`` here only exposes ``full − window`` as a graph
output.

Invariant after the pass: every selected canonical self-attention node without a
mask and with ``is_causal=0`` has been replaced by ``genzip.WindowAttention``
(key j visible to query i iff |i - j| <= w, the function body installed in the
model), its output keeps the old output's name, dtype and shape, and cross,
causal and masked attention are untouched. Downstream nodes consume the window
output; with ``residual=true`` each new node also outputs ``full - window`` as
the graph output ``attn_residual.{index}`` (so window + residual = full attention,
what a later WA-RS cache pass feeds back on reuse steps).

``window=F`` resolves w = round(F·N) against each node's static sequence length
N; ``tokens=T`` uses w = T. Nodes whose window already covers the sequence are
left alone (nothing to save), so ``modified`` is False when nothing changes (and a
warning says why when the model has attention). A selected attention that
canonicalize-attn left ``unknown`` (neither self nor cross) is refused with GenzipError.
"""

from __future__ import annotations

import collections
import dataclasses
import logging

import onnx_ir as ir

from genzip.errors import GenzipError
from genzip.metadata import ATTN_WINDOW_KEY as WINDOW_KEY
from genzip.passes.attention import _flops as af
from genzip.passes.attention._guards import refuse_int8_scores
from genzip.passes.attention._heads import attention_scale, gqa_group
from genzip.passes.infra.context import PassContext
from genzip.passes.infra.contract import GenzipPass, GenzipPassResult
from genzip.plugins import window_attention

logger = logging.getLogger(__name__)

RESIDUAL_NAME = "attn_residual.{index}"
DEFAULT_FRACTION = 0.125


def check_window_options(opts) -> None:
    """Validate frozen options with ``window``/``tokens``/``chunk`` fields (window-attn,
    share-attn); neither size given means ``window=DEFAULT_FRACTION``."""
    if opts.window is not None and opts.tokens is not None:
        raise ValueError("give exactly one of window=FRACTION and tokens=COUNT")
    if opts.window is None and opts.tokens is None:
        object.__setattr__(opts, "window", DEFAULT_FRACTION)
    if opts.window is not None and not 0.0 < opts.window <= 1.0:
        raise ValueError(f"window={opts.window} must be a fraction in (0, 1]; use tokens= for a count")
    if opts.tokens is not None and opts.tokens < 0:
        raise ValueError(f"tokens={opts.tokens} must be >= 0")
    if opts.chunk is not None and opts.chunk < 1:
        raise ValueError(f"chunk={opts.chunk} must be >= 1")


def resolve_window(opts, n, where: str) -> int:
    """Tokens each side for sequence length ``n``: ``tokens``, or ``window`` x ``n`` rounded."""
    if opts.tokens is not None:
        return opts.tokens
    if not isinstance(n, int):
        raise GenzipError(
            f"{where} has symbolic sequence length '{n}', so window={opts.window} cannot be resolved",
            "give an absolute window with tokens=COUNT, or export with a static sequence length",
        )
    return max(0, round(opts.window * n))


@dataclasses.dataclass(frozen=True, kw_only=True)
class WindowAttentionOptions:
    # Exactly one of window (fraction of N) and tokens (absolute); window=0.125 if neither.
    window: float | None = None
    tokens: int | None = None
    layers: tuple[int, ...] = ()  # attention indices (genzip.attn.index) of self-attention; () = all
    residual: bool = False
    chunk: int | None = None  # query chunk of the banded body; None = choose from the window

    def __post_init__(self):
        check_window_options(self)
        if any(i < 0 for i in self.layers) or len(set(self.layers)) != len(self.layers):
            raise ValueError(f"layers={','.join(map(str, self.layers))} must be distinct indices >= 0")


class WindowAttentionPass(GenzipPass):
    name = "window-attn"
    Options = WindowAttentionOptions
    summary = "replace self-attention with sliding-window genzip.WindowAttention (no residual: WA-RS is share-attn)"
    requires_facts = frozenset({"attention-canonical"})
    ensures_facts = frozenset({"attention-windowed"})
    conflicts_facts = {"attention-shared": "share-attn before it moved the self-attention into its mode switches; "
                                           "use share-attn's own window modes instead"}
    transforming = True

    def static_axes(self) -> dict[str, str]:
        why = "its banded windows and query chunks are sized from the static token count of each self-attention"
        return {"size": why, "seq": why}

    def _window(self, n: int | ir.SymbolicDim, site: af.AttentionSite) -> int:
        return resolve_window(self.options, n, f"window-attn: attention {site.index} ({site.scope or site.node.name})")

    def _selected(self, sites: list[af.AttentionSite]) -> list[af.AttentionSite]:
        self_sites = [s for s in sites if s.kind == "self"]
        wanted = [s for s in sites if not self.options.layers or s.index in self.options.layers]
        af.refuse_unknown(wanted, "window-attn", "window-attn needs self attention; pick other layers= "
                          "or re-export the model so its attention's Q/K/V data flow is plain")
        if not self.options.layers:
            return self_sites
        known = {s.index for s in self_sites}
        unknown = sorted(set(self.options.layers) - known)
        if unknown:
            listing = ",".join(map(str, sorted(known))) or "none"
            raise GenzipError(
                f"window-attn{{layers}}: {','.join(map(str, unknown))} not among the self-attention indices",
                f"self-attention indices in this model: {listing}",
            )
        return [s for s in self_sites if s.index in self.options.layers]

    def _check(self, site: af.AttentionSite) -> tuple[str | None, object, int, int]:
        """(reason to leave the node alone or None, N, window, query heads per KV head)."""
        reason = af.unsupported_reason(site.node, causal=False)
        if reason:
            return reason, None, 0, 1
        q = site.node.inputs[0]
        n = q.shape[2]
        w = self._window(n, site)
        group = gqa_group(site.node)
        if group is None:
            return "head-count", n, w, 1
        if isinstance(n, int) and w >= n - 1:
            return "window-covers-sequence", n, w, group
        return None, n, w, group

    def run(self, model: ir.Model, context: PassContext) -> GenzipPassResult:
        refuse_int8_scores(model, "window-attn")
        sites = af.attention_sites(model)
        flops = {id(s.node): af.canonical_attention_flops(s.node) for s in sites}
        before = sum(f or 0 for f in flops.values())
        skipped: collections.Counter[str] = collections.Counter()
        windows: set[int] = set()
        replaced = 0
        for site in self._selected(sites):
            q, v = site.node.inputs[0], site.node.inputs[2]  # kept: replacing detaches the node
            reason, n, w, group = self._check(site)
            if reason is None:
                reason = self._replace(model, site, w, group)
            if reason:
                skipped[reason] += 1
                logger.info("window-attn: attention %d (%s) left alone: %s", site.index, site.node.name, reason)
                continue
            replaced += 1
            windows.add(w)
            flops[id(site.node)] = af.restricted_flops(q, v, af.window_pairs(n, w)) if isinstance(n, int) else None
        known = [f for f in flops.values() if f is not None]
        stats = {
            "nodes_replaced": replaced,
            "attn_flops_before": before,
            "attn_flops_after": sum(known),
            "flops_unknown_nodes": len(flops) - len(known),
            "windows": sorted(windows),
        }
        stats.update({f"skipped_{k.replace('-', '_')}": c for k, c in sorted(skipped.items())})
        why = af.no_op_reason("window-attn", model, sites, skipped) if not replaced else None
        return GenzipPassResult(model, replaced > 0, stats, noop_reason=why)

    def _replace(self, model: ir.Model, site: af.AttentionSite, w: int, group: int) -> str | None:
        node = site.node
        graph = node.graph
        residual = self.options.residual
        if residual and graph is not model.graph:
            logger.warning("window-attn: attention %d is inside a subgraph; no residual output", site.index)
            residual = False
        scale = attention_scale(node)
        if scale is None:
            return "unknown-scale"
        new = window_attention.make_node(
            model, list(node.inputs[:3]), window=w, scale=scale, chunk=self.options.chunk,
            residual=residual, group=group, name=f"{node.name or 'attention'}_window",
        )
        new.metadata_props.update(node.metadata_props)
        new.metadata_props[WINDOW_KEY] = str(w)
        old_out = node.outputs[0]
        ir.convenience.replace_nodes_and_values(graph, node, [node], [new], [old_out], [new.outputs[0]])
        if residual:
            res = new.outputs[1]
            res.name = RESIDUAL_NAME.format(index=site.index)
            res.dtype, res.shape = new.outputs[0].dtype, new.outputs[0].shape
            graph.outputs.append(res)
        return None
