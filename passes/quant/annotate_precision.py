"""``annotate-precision``: write a frozen quantization spec on every quantizable node.

Invariant after the pass (fact ``quant-annotated``): every MatMul/Gemm/Conv of the
main graph whose weight (input 1) is a constant initializer (rank 2 for
MatMul/Gemm, >= 3 for Conv; Gemm without transA) and whose op is selected by
``ops`` carries ``metadata_props["genzip.quant"]``, a :class:`QuantSpec` JSON (schema
in ``quant_spec``). A node held in high precision carries a spec too, with
``keep`` naming the reason and fp32 weight/activation, so ``quant`` can check that
nothing was forgotten. Nothing else in the graph changes.

Selection, in order: ``ops``; ``include`` (regex over the torch module path from
``pkg.torch.onnx.name_scopes``, else the node name) limits quantization to
matching layers; with ``keep-defaults`` the first and last quantizable layers and
layers matching ``DEFAULT_KEEP`` (timestep/caption embedders, norms and their
modulation linears, patch/position embedders, token embeddings, LM head) stay
high precision; ``keep`` adds regexes; ``quantize`` (regex) names layers to quantize
even where a default keep rule would keep them (e.g. SD3's ``context_embedder``, the
GEMM that reads the text encoder's states; ``keep`` and ``include`` still win). ``bos=true`` (MixDQ) marks layers matching
``bos-layers`` (default: the GEMMs whose input is the text embedding: cross-attention
K/V projections, and SD3's ``context_embedder``) so token 0 of their activation stays fp32. Attention BMMs (no constant
weight) are annotated only with ``attention=int8``: each self-attention ``Attention``
node then gets an ``op="Attention"`` spec (int8 QK^T, ``quant_attention``), or a kept
spec naming why its form cannot (mask, causal, GQA, ...).

``plan=FILE`` (mixed precision, ``mixed_precision_plan``): every layer the plan lists
gets its plan format (``fp16`` = kept, reason ``plan fp16``), overriding ``scheme``
and the keep rules; the others are annotated as above. A plan key that names no
quantizable node, an unknown format or a malformed file is a one-line error.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Literal

import onnx_ir as ir

from genzip.errors import GenzipError
from genzip.metadata import SHARE_LAYOUT_KEY
from genzip.passes.attention._classify import attention_kind, attention_scope
from genzip.passes.infra.context import PassContext
from genzip.passes.infra.contract import GenzipPass, GenzipPassResult
from genzip.passes.infra.module_paths import module_path
from genzip.passes.quant._attention import attention_spec, unsupported
from genzip.passes.quant._formats import FORMATS
from genzip.passes.quant._plan import check_keys, layer_keys, read_plan
from genzip.passes.quant._spec import DYNAMIC_SCHEMES, META_KEY, QuantSpec, TensorSpec, weight_axes, weight_value

Scheme = Literal["w8a8", "w8a8-dynamic", "w4a16", "w4a8", "w4a8-dynamic", "fp8"]
DEFAULT_KEEP = (
    r"(^|\.)(time_proj|timestep\w*|time_\w*embed\w*|t_embedder|adaln_single|emb)(\.|$)",
    r"(^|\.)(caption_projection|context_embedder|text_embedder|y_embedder)(\.|$)",
    r"(^|\.)(pos_embed|patch_embed|x_embedder|embed_tokens|lm_head)(\.|$)",
    r"(^|\.)norm\w*(\.|$)",
)
DEFAULT_BOS = r"attn2\.(to_k|to_v)$|(^|\.)context_embedder$"
FP32 = TensorSpec(input=1, dtype="fp32", granularity="per-tensor")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Options:
    scheme: Scheme = "w8a8"
    ops: tuple[Literal["MatMul", "Gemm", "Conv"], ...] = ("MatMul", "Gemm", "Conv")
    include: str | None = None
    keep: tuple[str, ...] = ()
    keep_defaults: bool = True
    quantize: str | None = None
    block: int = 32
    bos: bool = False
    bos_layers: str = DEFAULT_BOS
    # Mixed precision: JSON layer -> format (mixed_precision_plan); listed layers take
    # their plan format (fp16 = kept), unlisted ones follow scheme and the keep rules.
    plan: str | None = None
    # Self-attention QK^T in int8 (quant_attention); include/keep regexes apply to the
    # attention's module scope. Cross-attention (a few text tokens) stays fp32.
    attention: Literal["none", "int8"] = "none"

    def __post_init__(self):
        if self.block not in (16, 32, 64, 128, 256):
            raise ValueError(f"block={self.block} must be one of 16, 32, 64, 128, 256")
        for pattern in (self.include, self.quantize, self.bos_layers, *self.keep):
            if pattern is None:
                continue
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"bad regex '{pattern}': {e}") from None


def _weight_spec(op: str, node: ir.Node, opts: Options) -> TensorSpec:
    out_axis, red_axis = weight_axes(node)
    if opts.scheme in ("w4a16", "w4a8"):
        return TensorSpec(input=1, dtype="int4", granularity="per-block", axis=red_axis, block_size=opts.block)
    if opts.scheme == "w4a8-dynamic":  # ViDiT-Q W4A8: per-channel int4 weights
        return TensorSpec(input=1, dtype="int4", granularity="per-channel", axis=out_axis)
    dtype = "float8e4m3fn" if opts.scheme == "fp8" else "int8"
    return TensorSpec(input=1, dtype=dtype, granularity="per-channel", axis=out_axis)


def _activation_spec(opts: Options) -> TensorSpec | None:
    if opts.scheme == "w4a16":
        return None
    if opts.scheme in DYNAMIC_SCHEMES:
        return TensorSpec(input=0, dtype="int8", granularity="per-token", dynamic=True)
    dtype = "float8e4m3fn" if opts.scheme == "fp8" else "int8"
    return TensorSpec(input=0, dtype=dtype, granularity="per-tensor")


def _unsupported(node: ir.Node, opts: Options) -> str | None:
    if node.op_type == "Conv" and opts.scheme in (*DYNAMIC_SCHEMES, "w4a16", "w4a8"):
        return f"{opts.scheme} covers MatMul/Gemm only"
    if opts.scheme in DYNAMIC_SCHEMES and node.op_type == "MatMul":
        x = node.inputs[0]
        if x is not None and x.shape is not None and len(x.shape) < 2:
            return "per-token needs a rank >= 2 activation"
    return None


def _load_plan(path: str, candidates: list[ir.Node]) -> dict[int, str]:
    """id(node) -> plan format; every key must name one of ``candidates``."""
    plan = read_plan(path)
    keys = layer_keys(candidates)
    check_keys(plan, keys, path)
    return {id(keys[k]): fmt for k, fmt in plan.items()}


def _plan_options(opts: Options, fmt: str | None, node: ir.Node) -> tuple[Options | None, str | None]:
    """(options to annotate ``node`` with, keep reason) for a planned node; (None, None) if unplanned."""
    if fmt is None:
        return None, None
    scheme = FORMATS[fmt].scheme
    if scheme is None:
        return opts, f"plan {fmt}"
    node_opts = dataclasses.replace(opts, scheme=scheme)
    why = _unsupported(node, node_opts)
    if why is not None:
        raise GenzipError(f"plan '{opts.plan}' gives {node.name} ({node.op_type}) format {fmt}, but {why}",
                          "pick another format for that layer in the plan")
    return node_opts, None


def spec_for(node: ir.Node, path: str, opts: Options, keep: str | None, bos: bool) -> QuantSpec:
    """The spec of ``node`` under ``opts.scheme`` (``keep``: held high precision); also
    used by mixed-precision, so a uniform plan gives byte-identical annotations."""
    if keep is not None:
        return QuantSpec(scheme=opts.scheme, op=node.op_type, module=path, keep=keep, weight=FP32, activation=None)
    return QuantSpec(scheme=opts.scheme, op=node.op_type, module=path, keep=None,
                     weight=_weight_spec(node.op_type, node, opts), activation=_activation_spec(opts), bos=bos)


def _include_miss(path: str, include: re.Pattern | None) -> str | None:
    return "not matched by include" if include is not None and not include.search(path) else None


def _keep_hit(path: str, keep_res: list[re.Pattern]) -> str | None:
    hit = next((r.pattern for r in keep_res if r.search(path)), None)
    return f"keep {hit}" if hit else None


def _write_spec(node: ir.Node, spec: QuantSpec) -> bool:
    """Store ``spec`` on ``node``; True if the metadata changed."""
    raw = spec.to_json()
    if node.metadata_props.get(META_KEY) == raw:
        return False
    node.metadata_props[META_KEY] = raw
    return True


def _annotate_attention(model: ir.Model, opts: Options, include, keep_res) -> dict:
    int8 = kept = 0
    modified = False
    for node in model.graph:
        if node.op_type != "Attention" or node.domain != "" or attention_kind(node) != "self":
            continue
        path = attention_scope(node) or node.name or ""
        keep = unsupported(node) or _include_miss(path, include) or _keep_hit(path, keep_res)
        spec = attention_spec(path, opts.scheme) if keep is None else spec_for(node, path, opts, keep, False)
        int8 += keep is None
        kept += keep is not None
        modified |= _write_spec(node, spec)
    return {"attention_int8": int8, "attention_kept": kept, "modified": modified}


class AnnotatePrecisionPass(GenzipPass):
    name = "annotate-precision"
    summary = "write a frozen per-node quantization spec (genzip.quant) on MatMul/Gemm/Conv"
    Options = Options
    ensures_facts = frozenset({"quant-annotated"})

    def run(self, model: ir.Model, context: PassContext) -> GenzipPassResult:
        opts: Options = self.options
        if SHARE_LAYOUT_KEY in model.metadata_props:
            # share-attn moved the attention projections into If branches, which this
            # pass and calibrate do not enter: they would silently stay fp32.
            raise GenzipError(
                "annotate-precision runs after share-attn, whose attention projections sit in If branches",
                "quantize first: '...,annotate-precision,calibrate,quant{scheme=...},share-attn{...}'",
            )
        default_keeps = [re.compile(p) for p in (DEFAULT_KEEP if opts.keep_defaults else ())]
        user_keeps = [re.compile(p) for p in opts.keep]
        keep_res = default_keeps + user_keeps
        force = re.compile(opts.quantize) if opts.quantize else None
        include = re.compile(opts.include) if opts.include else None
        bos_re = re.compile(opts.bos_layers)
        candidates = [n for n in model.graph if n.op_type in opts.ops and weight_value(n) is not None]
        plan = _load_plan(opts.plan, candidates) if opts.plan else {}
        modified, quantized, bos_nodes = False, 0, 0
        for index, node in enumerate(candidates):
            path = module_path(node) or node.name or ""
            node_opts, keep = _plan_options(opts, plan.get(id(node)), node)
            if node_opts is None:  # unplanned: scheme and the keep rules (a plan entry overrides both)
                node_opts, keep = opts, _unsupported(node, opts)
                keep = keep or _include_miss(path, include)
                forced = force is not None and bool(force.search(path))
                if keep is None and opts.keep_defaults and not forced and index in (0, len(candidates) - 1):
                    keep = "first layer" if index == 0 else "last layer"
                keep = keep or _keep_hit(path, user_keeps if forced else keep_res)
            bos = node_opts.bos and bool(bos_re.search(path)) and node.op_type == "MatMul"
            spec = spec_for(node, path, node_opts, keep, bos)
            quantized += spec.keep is None
            bos_nodes += spec.bos
            modified |= _write_spec(node, spec)
        stats = {"annotated": len(candidates), "quantized": quantized, "kept": len(candidates) - quantized}
        if opts.attention == "int8":
            counts = _annotate_attention(model, opts, include, keep_res)
            modified |= counts.pop("modified")
            stats.update(counts)
        if opts.plan:
            stats["plan_layers"] = len(plan)
        if opts.bos:
            stats["bos"] = bos_nodes
        return GenzipPassResult(model, modified, stats)
