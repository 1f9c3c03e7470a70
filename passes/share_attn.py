"""``share-attn``: every canonical self-attention block becomes a per-layer mode switch.

Invariant after the pass: each selected self-attention block (``share_block``:
Q/K/V projections, ``Attention``, output projection) of the main graph is one
nested ONNX ``If`` on ``attn_modes[l]`` (int64 ``[L]`` graph input; ``l`` counts
the selected blocks in attention-index order), whose branches reference the
outer graph's weights (no copies) and run only the chosen mode:

====  ===========================  =============================================
mode  method (runtime/plan.py)     block output O / residual output R
====  ===========================  =============================================
0     full                         O = block(X) / R = residual input
1     full, refresh residual       O = block(X) / R = Attention − Window (q, k, v)
2     window-residual (WA-RS)      O = block with Window + residual input / R = in
3     share-step (AST)             O = block-output input (previous step) / R = in
4     full+share-cfg (ASC)         O = [o, o], o = block(X[B/2:]) / R = in
5     window-residual+share-cfg    as 4 with Window + residual input[B/2:] / R = in
====  ===========================  =============================================

CFG batch order (recorded in the layout): the first half of the batch is the
unconditional half, the second the conditional one (diffusers' order), so ASC
computes the second half and copies it over the first.

Per layer l the graph gains inputs ``attn_block_in.l`` ``[B, N, C]`` and
``attn_residual_in.l`` ``[B, H, N, Dv]`` and outputs ``attn_block_out.l`` (O) and
``attn_residual_out.l`` (R). Every new input has an initializer default
(``attn_modes`` zeros, caches empty), so the artifact still runs, all-full and
exactly as before, on its plain inputs. The layout the runtime needs is in the
pass stats (manifest ``pass_stats``) and in model metadata ``genzip.share_attn``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math

import numpy as np
import onnx_ir as ir

from genzip.errors import GenzipError
from genzip.passes import attn_flops as af
from genzip.passes.base import GenzipPass, GenzipPassResult
from genzip.passes.share_block import Block, clone_nodes, find_block
from genzip.plugins import window_attention

logger = logging.getLogger(__name__)

MODES_INPUT = "attn_modes"
BLOCK_IN, BLOCK_OUT = "attn_block_in.{l}", "attn_block_out.{l}"
RESIDUAL_IN, RESIDUAL_OUT = "attn_residual_in.{l}", "attn_residual_out.{l}"
LAYOUT_KEY = "genzip.share_attn"
CFG_ORDER = ["uncond", "cond"]
DEFAULT_FRACTION = 0.125


@dataclasses.dataclass(frozen=True, kw_only=True)
class ShareAttentionOptions:
    # WA-RS window: a fraction of N (window) or tokens; window=0.125 if neither.
    window: float | None = None
    tokens: int | None = None
    layers: tuple[int, ...] = ()  # self-attention indices (genzip.attn.index); () = all
    chunk: int | None = None

    def __post_init__(self):
        if self.window is not None and self.tokens is not None:
            raise ValueError("give exactly one of window=FRACTION and tokens=COUNT")
        if self.window is None and self.tokens is None:
            object.__setattr__(self, "window", DEFAULT_FRACTION)
        if self.window is not None and not 0.0 < self.window <= 1.0:
            raise ValueError(f"window={self.window} must be a fraction in (0, 1]; use tokens= for a count")
        if self.tokens is not None and self.tokens < 0:
            raise ValueError(f"tokens={self.tokens} must be >= 0")
        if self.chunk is not None and self.chunk < 1:
            raise ValueError(f"chunk={self.chunk} must be >= 1")


class _Builder:
    """Appends nodes to a list; names everything with one prefix (unique per branch)."""

    def __init__(self, prefix: str):
        self.prefix, self.nodes, self.count = prefix, [], 0

    def op(self, op_type: str, *inputs, outputs: int = 1, attrs=(), domain: str = "") -> ir.Value | tuple:
        self.count += 1
        node = ir.Node(domain, op_type, list(inputs), list(attrs), num_outputs=outputs,
                       name=f"{self.prefix}{op_type}_{self.count}")
        for i, out in enumerate(node.outputs):
            out.name = f"{self.prefix}{op_type.lower()}_{self.count}_{i}"
        self.nodes.append(node)
        return node.outputs[0] if outputs == 1 else node.outputs

    def const(self, value, dtype=np.int64) -> ir.Value:
        return self.op("Constant", attrs=[ir.AttrTensor("value", ir.tensor(np.asarray(value, dtype=dtype)))])

    def graph(self, outputs: list[ir.Value], name: str) -> ir.Graph:
        return ir.Graph([], outputs, nodes=self.nodes, name=name)


def _if(b: _Builder, cond: ir.Value, then: ir.Graph, other: ir.Graph, n: int = 2) -> tuple:
    return b.op("If", cond, outputs=n, attrs=[ir.AttrGraph("then_branch", then), ir.AttrGraph("else_branch", other)])


class ShareAttentionPass(GenzipPass):
    name = "share-attn"
    Options = ShareAttentionOptions
    summary = "self-attention blocks -> per-layer If switch (full / WA-RS / AST / ASC) with cache inputs and outputs"
    requires_facts = frozenset({"attention-canonical"})
    # Attention now also lives in If branches, without canonical metadata.
    invalidates_facts = frozenset({"attention-canonical"})

    def run(self, model: ir.Model) -> GenzipPassResult:
        sites = [s for s in af.attention_sites(model) if s.kind == "self" and s.node.graph is model.graph]
        if self.options.layers:
            unknown = sorted(set(self.options.layers) - {s.index for s in sites})
            if unknown:
                raise GenzipError(
                    f"share-attn{{layers}}: {','.join(map(str, unknown))} not among the self-attention indices",
                    f"self-attention indices in this model: {','.join(str(s.index) for s in sites) or 'none'}",
                )
            sites = [s for s in sites if s.index in self.options.layers]
        blocks = []
        for site in sites:
            found = find_block(site.node)
            reason = found if isinstance(found, str) else af.unsupported_reason(site.node, causal=False)
            if reason is None and (found.output.shape is None or site.node.outputs[0].shape is None):
                reason = "unknown-shape"  # the cache inputs need a rank and feature dims
            if reason:
                logger.info("share-attn: attention %d (%s) left alone: %s", site.index, site.node.name, reason)
                continue
            blocks.append((site, found))
        if not blocks:
            return GenzipPassResult(model, False, {"layers": 0})
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
        stats = {"layers": len(blocks), "window": layout["window"], "attn_flops_full": flops_full,
                 "attn_flops_window": flops_window, "layout": layout}
        return GenzipPassResult(model, True, stats)

    def _window(self, n, index: int) -> int:
        if self.options.tokens is not None:
            return self.options.tokens
        if not isinstance(n, int):
            raise GenzipError(
                f"share-attn: attention {index} has symbolic sequence length '{n}', so window="
                f"{self.options.window} cannot be resolved",
                "give an absolute window with tokens=COUNT, or export with a static sequence length",
            )
        return max(0, round(self.options.window * n))

    def _rewrite(self, model: ir.Model, modes: ir.Value, layer: int, site: af.AttentionSite,
                 block: Block, w: int) -> dict:
        graph = model.graph
        attn = block.attention
        group = attn.inputs[0].shape[1] // attn.inputs[1].shape[1] if isinstance(attn.inputs[1].shape[1], int) else 1
        scale = attn.attributes.get_float("scale", 1.0 / math.sqrt(attn.inputs[0].shape[3]))
        y, o = attn.outputs[0], block.output
        prev_in = _cache_input(graph, BLOCK_IN.format(l=layer), o)
        res_in = _cache_input(graph, RESIDUAL_IN.format(l=layer), y)
        p = f"share{layer}_"

        def window_y(inputs, made) -> ir.Value:
            node = window_attention.make_node(model, inputs[:3], window=w, scale=scale, chunk=self.options.chunk,
                                              group=group, name=f"{p}window_{len(made)}")
            node.outputs[0].name = f"{p}window_y_{len(made)}"
            made.append(node)
            return node.outputs[0]

        def window_plus(inputs, made, residual: ir.Value) -> list[ir.Value]:
            add = ir.Node("", "Add", [window_y(inputs, made), residual], name=f"{p}window_add_{len(made)}")
            add.outputs[0].name = f"{p}window_sum_{len(made)}"
            made.append(add)
            return [add.outputs[0]]

        def branch(tag: str, half: bool, windowed: bool, refresh: ir.Value | None = None) -> ir.Graph:
            b = _Builder(f"{p}{tag}_")
            x, res = block.x, res_in
            if half:  # the conditional (second) half of the batch
                start = b.op("Div", b.op("Shape", x, attrs=[ir.AttrInt64("end", 1)]), b.const([2]))
                x = b.op("Slice", x, start, b.const([np.iinfo(np.int64).max]), b.const([0]))
                res = b.op("Slice", res_in, start, b.const([np.iinfo(np.int64).max]), b.const([0]))
            replace = {id(attn): (lambda i, m: window_plus(i, m, res))} if windowed else None
            made, mapping = clone_nodes(block.nodes, {id(block.x): x}, f"{p}{tag}_", replace)
            b.nodes.extend(made)
            out = mapping[id(o)]
            if half:
                out = b.op("Concat", out, out, attrs=[ir.AttrInt64("axis", 0)])
            if refresh is not None:  # full: residual = full - window, computed only in mode 1
                rb = _Builder(f"{p}{tag}_res_")
                wy = window_y([mapping[id(v)] for v in attn.inputs[:3]], rb.nodes)
                r = rb.op("Sub", mapping[id(y)], wy)
                kb = _Builder(f"{p}{tag}_keep_")
                keep = kb.op("Identity", res_in)
                r_out = _if(b, refresh, rb.graph([r], f"{p}{tag}_refresh"), kb.graph([keep], f"{p}{tag}_keep"), 1)
            else:
                r_out = b.op("Identity", res_in)
            return b.graph([b.op("Identity", out), r_out], f"{p}{tag}")

        top = _Builder(p)
        index = top.const(layer)
        mode = top.op("Gather", modes, index, attrs=[ir.AttrInt64("axis", 0)])
        is_ = {k: top.op("Equal", mode, top.const(k)) for k in (1, 2, 3, 4)}
        is_full = top.op("Less", mode, top.const(2))
        share = _Builder(f"{p}step_")
        share_g = share.graph([share.op("Identity", prev_in), share.op("Identity", res_in)], f"{p}share_step")
        cfg_b = _Builder(f"{p}cfgsel_")
        cfg_g = cfg_b.graph(list(_if(cfg_b, is_[4], branch("fullcfg", True, False), branch("wincfg", True, True))),
                            f"{p}cfg")
        win_b = _Builder(f"{p}winsel_")
        win_g = win_b.graph(list(_if(win_b, is_[2], branch("win", False, True), cfg_g)), f"{p}notfull")
        compute_b = _Builder(f"{p}computesel_")
        compute_g = compute_b.graph(list(_if(compute_b, is_full, branch("full", False, False, is_[1]), win_g)),
                                    f"{p}compute")
        new_o, new_r = _if(top, is_[3], share_g, compute_g)
        new_o.name, new_r.name = BLOCK_OUT.format(l=layer), RESIDUAL_OUT.format(l=layer)
        new_o.dtype, new_o.shape = o.dtype, o.shape
        new_r.dtype, new_r.shape = y.dtype, res_in.shape
        # Insert before the first consumer of O, then route O's users to the switch.
        first_use = min((u.node for u in o.uses()), key=list(graph).index)
        graph.insert_before(first_use, top.nodes)
        o.replace_all_uses_with(new_o)
        graph.remove(block.nodes, safe=True)
        graph.outputs.extend([new_o, new_r])
        return {"layer": layer, "attn_index": site.index, "scope": site.scope, "window": w,
                "block_in": prev_in.name, "block_out": new_o.name,
                "residual_in": res_in.name, "residual_out": new_r.name,
                "block_shape": _dims(o), "residual_shape": _dims(y)}


def _dims(value: ir.Value) -> list:
    return [d if isinstance(d, int) else str(d) for d in value.shape] if value.shape is not None else None


def _cache_input(graph: ir.Graph, name: str, like: ir.Value) -> ir.Value:
    """A graph input shaped like ``like`` whose default (initializer) is empty along the batch.

    The batch dim is always symbolic, so the empty default and any real batch both fit.
    """
    dims = list(like.shape)
    batch = dims[0] if isinstance(dims[0], ir.SymbolicDim) and dims[0].value else "share_batch"
    empty = [0] + [d if isinstance(d, int) else 1 for d in dims[1:]]
    value = ir.Value(name=name, type=ir.TensorType(like.dtype), shape=ir.Shape([batch, *dims[1:]]))
    value.const_value = ir.tensor(np.zeros(empty, dtype=like.dtype.numpy()), name=name)
    graph.inputs.append(value)
    graph.register_initializer(value)
    return value
