"""``share-attn``: every canonical self-attention block becomes a per-layer mode switch.

Invariant after the pass: each selected self-attention block (``share_block``:
Q/K/V projections, ``Attention``, output projection) of the main graph is one
nested ONNX ``If`` on ``attn_modes[l]`` (int64 ``[L]`` graph input; ``l`` counts
the selected blocks in attention-index order) that runs only the chosen mode:

====  ===========================  =============================================
mode  method (runtime/plan.py)     block output O / residual output R
====  ===========================  =============================================
0     full                         O = block(X) / R = residual input
1     full, refresh residual       O = block(X) / R = Attention − Window (q, k, v)
2     window-residual (WA-RS)      O = block with Window + residual input / R = in
3     share-step (AST)             O = block-output input (previous step) / R = in
4     full+share-cfg (ASC)         O = [o, o], o = block(X[B/2:]) / R = in
5     window-residual+share-cfg    as 4 with Window + residual input[B/2:] / R = in
6     full+share-cfg, refresh      as 4 / R = [r, r], r = Attention − Window on X[B/2:]
====  ===========================  =============================================

Structure: ``If(mode == 3)`` returns the caches (AST); else one compute branch
slices the batch (the whole batch, or its second half for ASC), runs the block
once with an inner ``If`` choosing full ``Attention`` (mode 1 also refreshes the
residual; so does mode 6) or ``WindowAttention`` + residual, and tiles the output
(and a refreshed residual) back over the batch (x1, or x2 for ASC). So each projection exists once, and the block's own
weights move into that branch (``share_graph.move_initializers``; no copies). A
quantized block (``quant`` before ``share-attn``: activation Q->DQ, weight DQ of
int8 initializers) moves as a whole, which keeps ONNX Runtime's int8 GEMM fusion:
ORT fuses ``DQ(W) -> MatMul`` only when W is an initializer of the GEMM's own graph.

CFG batch order (recorded in the layout): the first half of the batch is the
unconditional half, the second the conditional one (diffusers' order), so ASC
computes the second half and copies it over the first.

Per layer l the graph gains inputs ``attn_block_in.l`` ``[B, N, C]`` and
``attn_residual_in.l`` ``[B, H, N, Dv]`` and outputs ``attn_block_out.l`` (O) and
``attn_residual_out.l`` (R). Every new input has an initializer default
(``attn_modes`` zeros, caches empty), so the artifact still runs, all-full and
exactly as before, on its plain inputs. The layout the runtime needs is in the
pass stats (manifest ``pass_stats``) and in model metadata ``genzip.share_attn``.
A selected attention canonicalize-attn left ``unknown`` is refused with GenzipError;
selecting no block although the model has attention logs a warning saying why.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging

import numpy as np
import onnx_ir as ir

from genzip.errors import GenzipError
from genzip.metadata import (
    MODE_FULL_CFG,
    MODE_FULL_CFG_RESIDUAL,
    MODE_FULL_RESIDUAL,
    MODE_SHARE_STEP,
    MODE_WINDOW,
    MODE_WINDOW_CFG,
)
from genzip.metadata import SHARE_LAYOUT_KEY as LAYOUT_KEY
from genzip.metadata import SHARE_MODES_INPUT as MODES_INPUT
from genzip.passes.attention import _flops as af
from genzip.passes.attention._guards import refuse_int8_scores
from genzip.passes.attention._heads import attention_scale, gqa_group
from genzip.passes.attention._share_block import Block, clone_nodes, find_block
from genzip.passes.attention._share_graph import Builder, cache_input, dims, if_, move_initializers
from genzip.passes.attention.window_attn import check_window_options, resolve_window
from genzip.passes.infra.context import PassContext
from genzip.passes.infra.contract import GenzipPass, GenzipPassResult
from genzip.plugins import window_attention

logger = logging.getLogger(__name__)

BLOCK_IN, BLOCK_OUT = "attn_block_in.{l}", "attn_block_out.{l}"
RESIDUAL_IN, RESIDUAL_OUT = "attn_residual_in.{l}", "attn_residual_out.{l}"
CFG_ORDER = ["uncond", "cond"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ShareAttentionOptions:
    # WA-RS window: a fraction of N (window) or tokens; window=0.125 if neither.
    window: float | None = None
    tokens: int | None = None
    layers: tuple[int, ...] = ()  # self-attention indices (genzip.attn.index); () = all
    chunk: int | None = None

    def __post_init__(self):
        check_window_options(self)


class ShareAttentionPass(GenzipPass):
    name = "share-attn"
    Options = ShareAttentionOptions
    summary = "self-attention blocks -> per-layer If switch (full / WA-RS / AST / ASC) with cache inputs and outputs"
    requires_facts = frozenset({"attention-canonical"})
    # Attention now also lives in If branches, without canonical metadata.
    invalidates_facts = frozenset({"attention-canonical"})
    ensures_facts = frozenset({"attention-shared"})
    conflicts_facts = {"attention-windowed": "window-attn before it replaces the self-attention share-attn would "
                                             "share; use share-attn's own window modes (share-attn{window=F}) instead"}
    transforming = True

    def static_axes(self) -> dict[str, str]:
        why = "its cache inputs and window modes are shaped by the static token grid of each self-attention"
        return {"size": why, "seq": why}

    def run(self, model: ir.Model, context: PassContext) -> GenzipPassResult:
        refuse_int8_scores(model, "share-attn")
        all_sites = af.attention_sites(model)
        af.refuse_unknown([s for s in all_sites if not self.options.layers or s.index in self.options.layers],
                          "share-attn", "share-attn needs self attention; pick other layers= or re-export "
                          "the model so its attention's Q/K/V data flow is plain")
        sites = [s for s in all_sites if s.kind == "self" and s.node.graph is model.graph]
        if self.options.layers:
            unknown = sorted(set(self.options.layers) - {s.index for s in sites})
            if unknown:
                raise GenzipError(
                    f"share-attn{{layers}}: {','.join(map(str, unknown))} not among the self-attention indices",
                    f"self-attention indices in this model: {','.join(str(s.index) for s in sites) or 'none'}",
                )
            sites = [s for s in sites if s.index in self.options.layers]
        blocks = []
        skipped: collections.Counter[str] = collections.Counter()
        for site in sites:
            found = find_block(site.node)
            reason = found if isinstance(found, str) else af.unsupported_reason(site.node, causal=False)
            if reason is None and (found.output.shape is None or site.node.outputs[0].shape is None):
                reason = "unknown-shape"  # the cache inputs need a rank and feature dims
            if reason:
                logger.info("share-attn: attention %d (%s) left alone: %s", site.index, site.node.name, reason)
                skipped[reason] += 1
                continue
            blocks.append((site, found))
        if not blocks:
            why = af.no_op_reason("share-attn", model, all_sites, skipped)
            return GenzipPassResult(model, False, {"layers": 0}, noop_reason=why)
        modes = ir.Value(name=MODES_INPUT, type=ir.TensorType(ir.DataType.INT64), shape=ir.Shape([len(blocks)]))
        modes.const_value = ir.tensor(np.zeros(len(blocks), dtype=np.int64), name=MODES_INPUT)
        model.graph.inputs.append(modes)
        model.graph.register_initializer(modes)
        layout = {"modes_input": MODES_INPUT, "cfg_order": CFG_ORDER, "layers": []}
        flops_full = flops_window = 0
        windows = set()
        for layer, (site, block) in enumerate(blocks):
            n = site.node.inputs[0].shape[2]
            w = self._window(n, site.index)
            windows.add(w)
            q, v = site.node.inputs[0], site.node.inputs[2]
            flops_full += af.canonical_attention_flops(site.node) or 0
            flops_window += (af.restricted_flops(q, v, af.window_pairs(n, w)) or 0) if isinstance(n, int) else 0
            layout["layers"].append(self._rewrite(model, modes, layer, site, block, w))
        layout["window"] = max(windows)
        model.metadata_props[LAYOUT_KEY] = json.dumps(layout, separators=(",", ":"))
        stats = {"layers": len(blocks), "attention_only": sum(b.attention_only for _, b in blocks),
                 "window": layout["window"], "attn_flops_full": flops_full,
                 "attn_flops_window": flops_window, "layout": layout}
        return GenzipPassResult(model, True, stats)

    def _window(self, n, index: int) -> int:
        return resolve_window(self.options, n, f"share-attn: attention {index}")

    def _rewrite(self, model: ir.Model, modes: ir.Value, layer: int, site: af.AttentionSite,
                 block: Block, w: int) -> dict:
        graph = model.graph
        attn = block.attention
        group, scale = gqa_group(attn), attention_scale(attn)
        if group is None or scale is None:
            raise GenzipError(f"share-attn: attention {site.index} ({attn.name}) has no static head counts or head size",
                              "export the model with static head dimensions")
        y, o = attn.outputs[0], block.output
        prev_in = cache_input(graph, BLOCK_IN.format(l=layer), o)
        res_in = cache_input(graph, RESIDUAL_IN.format(l=layer), y)
        p = f"share{layer}_"

        def window_y(b: Builder, qkv: list[ir.Value]) -> ir.Value:
            node = window_attention.make_node(model, qkv, window=w, scale=scale, chunk=self.options.chunk,
                                              group=group, name=f"{b.prefix}Window")
            node.outputs[0].name = f"{b.prefix}window_y"
            b.nodes.append(node)
            return node.outputs[0]

        top = Builder(p)
        mode = top.op("Gather", modes, top.const(layer), axis=0)
        modes_ = (MODE_FULL_RESIDUAL, MODE_WINDOW, MODE_SHARE_STEP, MODE_FULL_CFG, MODE_WINDOW_CFG,
                  MODE_FULL_CFG_RESIDUAL)
        is_ = {k: top.op("Equal", mode, top.const(k)) for k in modes_}
        # ASC: compute the conditional half only
        half = top.op("Or", top.op("Or", is_[MODE_FULL_CFG], is_[MODE_WINDOW_CFG]), is_[MODE_FULL_CFG_RESIDUAL])
        windowed = top.op("Or", is_[MODE_WINDOW], is_[MODE_WINDOW_CFG])
        refreshes = top.op("Or", is_[MODE_FULL_RESIDUAL], is_[MODE_FULL_CFG_RESIDUAL])
        c = Builder(f"{p}compute_")
        # Slice start 0 (whole batch) or B/2 (the conditional half), and Tile x1 or x2 back:
        # one computation, so each projection (and its weights) exists once.
        halfway = c.op("Div", c.op("Shape", block.xs[0], end=1), c.const([2]))
        start = c.op("Where", half, halfway, c.const([0]))
        copies = c.op("Where", half, c.const([2]), c.const([1]))
        end, axis0 = c.const([np.iinfo(np.int64).max]), c.const([0])
        sliced = {id(x): c.op("Slice", x, start, end, axis0) for x in block.xs}
        res = c.op("Slice", res_in, start, end, axis0)
        made_r: list[ir.Value] = []

        def variant(qkv: list[ir.Value | None], made: list[ir.Node]) -> list[ir.Value]:
            wb = Builder(f"{p}window_")  # WA-RS: window attention + cached residual
            wa = wb.graph([wb.op("Add", window_y(wb, qkv[:3]), res), wb.op("Identity", res_in)], f"{p}window")
            fb = Builder(f"{p}full_")
            full_attn = ir.Node(attn.domain, attn.op_type, qkv, list(attn.attributes.values()),
                                overload=attn.overload, num_outputs=len(attn.outputs), name=f"{p}full_{attn.name}")
            fb.nodes.append(full_attn)
            full_y = full_attn.outputs[0]
            full_y.name, full_y.dtype = f"{p}full_y", y.dtype
            rb = Builder(f"{p}refresh_")  # modes 1 and 6: residual = full - window, over the whole batch
            r_reps = rb.op("Concat", copies, rb.const([1] * (len(y.shape) - 1)), axis=0)
            refresh = rb.graph([rb.op("Tile", rb.op("Sub", full_y, window_y(rb, qkv[:3])), r_reps)], f"{p}refresh")
            kb = Builder(f"{p}keep_")
            keep = kb.graph([kb.op("Identity", res_in)], f"{p}keep")
            fa = fb.graph([fb.op("Identity", full_y), if_(fb, refreshes, refresh, keep, 1)], f"{p}full")
            sel = Builder(f"{p}attn_")
            out_y, out_r = if_(sel, windowed, wa, fa)
            made.extend(sel.nodes)
            made_r.append(out_r)
            return [out_y]

        made, mapping = clone_nodes(block.nodes, sliced, f"{p}c_", {id(attn): variant})
        c.nodes.extend(made)
        reps = c.op("Concat", copies, c.const([1] * (len(o.shape) - 1)), axis=0)
        compute_g = c.graph([c.op("Tile", mapping[id(o)], reps), made_r[0]], f"{p}compute")
        s = Builder(f"{p}step_")  # AST: the previous step's block output
        share_g = s.graph([s.op("Identity", prev_in), s.op("Identity", res_in)], f"{p}share_step")
        new_o, new_r = if_(top, is_[MODE_SHARE_STEP], share_g, compute_g)
        new_o.name, new_r.name = BLOCK_OUT.format(l=layer), RESIDUAL_OUT.format(l=layer)
        new_o.dtype, new_o.shape = o.dtype, o.shape
        new_r.dtype, new_r.shape = y.dtype, res_in.shape
        # Insert before the first consumer of O, then route O's users to the switch.
        first_use = min((u.node for u in o.uses()), key=list(graph).index)
        graph.insert_before(first_use, top.nodes)
        o.replace_all_uses_with(new_o)
        graph.remove(block.nodes, safe=True)
        move_initializers(graph, compute_g)
        graph.outputs.extend([new_o, new_r])
        return {"layer": layer, "attn_index": site.index, "scope": site.scope, "window": w,
                "block_in": prev_in.name, "block_out": new_o.name,
                "residual_in": res_in.name, "residual_out": new_r.name,
                "block_shape": dims(o), "residual_shape": dims(y)}
