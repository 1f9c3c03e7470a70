"""``canonicalize-attn``: after it, every attention the pass recognises is one ONNX
``Attention`` node in a single canonical form, which later passes match on.

Canonical form (fact ``attention-canonical``):

* op ``Attention``, default domain, model opset >= 23;
* inputs ``Q [B, Hq, Sq, D]``, ``K [B, Hkv, Skv, D]``, ``V [B, Hkv, Skv, Dv]``,
  optional ``attn_mask`` (added to the scaled scores, broadcastable to
  ``[B, Hq, Sq, Skv]``, its query axis not a broadcast 1 unless Sq is: ONNX Runtime
  refuses that, so such a mask is fed through ``Expand``, stat ``masks_expanded``);
  no past key/value inputs;
* exactly one output, ``Y [B, Hq, Sq, Dv]``;
* attributes ``scale`` (float; left absent only when D is not static),
  ``is_causal`` (0/1), ``softcap`` = 0.0, ``qk_matmul_output_mode`` = 0; no
  ``q_num_heads``/``kv_num_heads``;
* metadata ``genzip.attn.kind`` (``self``/``cross``/``unknown``, see ``_classify``;
  an ``unknown`` node also gets ``genzip.attn.kind_reason``, and the passes that need
  self attention refuse it),
  ``genzip.attn.index`` (0, 1, ... in topological order over the main graph,
  its subgraphs, then model functions) and ``genzip.attn.scope`` (torch module
  path, when the exporter recorded one).

Sources: opset-23 4D ``Attention`` (attributes and metadata only), 3D
``Attention`` (``attn_normalize``), and decomposed MatMul/Softmax/MatMul chains
(``attn_patterns``). A decomposed chain in a model below opset 23 makes the pass
raise the model's default opset to 23 with onnxscript's version converter (which
also inlines model functions and drops dead nodes; below opset 18 it falls back to
the ONNX C converter) and the IR version to 11; when that fails the pass raises
``GenzipError`` rather than leave a half-converted model.
Models without a match keep their opset. Attention the pass cannot express
canonically (KV cache, softcap, used QK output) is refused with ``GenzipError``.
"""

from __future__ import annotations

import logging

import onnx.helper
import onnx.shape_inference
import onnx_ir as ir
import onnxscript.optimizer
from onnx_ir.passes import common as common_passes
from onnxscript.rewriter import pattern
from onnxscript.version_converter import ConvertVersionPass
from onnxscript.version_converter._version_converter import VersionConverterError

from genzip.errors import GenzipError
from genzip.frontend.attn_mask_queries import expand_mask_queries
from genzip.metadata import ATTN_INDEX_KEY as INDEX_KEY
from genzip.metadata import ATTN_KIND_KEY as KIND_KEY
from genzip.metadata import ATTN_KIND_REASON_KEY as KIND_REASON_KEY
from genzip.metadata import ATTN_SCOPE_KEY as SCOPE_KEY
from genzip.passes.attention import _normalize as attn_normalize
from genzip.passes.attention import _symbolic_shapes as symbolic_shapes
from genzip.passes.attention._classify import UNKNOWN, Sources, attention_scope, classify
from genzip.passes.attention._patterns import attention_rules
from genzip.passes.cleanup.fold_constants import fold
from genzip.passes.infra.context import PassContext
from genzip.passes.infra.contract import GenzipPass, GenzipPassResult
from genzip.passes.infra.graph import live_nodes, model_graphs, remove_orphans, restore_types, untyped_constants

logger = logging.getLogger(__name__)

ATTENTION_OPSET = 23


def _has_decomposed(model: ir.Model, rules: pattern.RewriteRuleSet) -> bool:
    for graph in model_graphs(model):
        # The rules read scale constants through const_value, which this fills in for Constant nodes.
        onnxscript.optimizer.basic_constant_propagation(graph)
        for node in graph:
            if any(rule.match(model, graph, node) for rule in rules):
                return True
    return False


# Folded outputs above this many elements stay computations (fold-constants' default).
_FOLD_LIMIT = 1 << 20


def _value_types(model: ir.Model) -> list[tuple[ir.Value, ir.Shape | None, ir.TypeProtocol | None]]:
    return [(v, v.shape, v.type) for g in model_graphs(model) for n in g for v in n.outputs]


def _infer(model: ir.Model, when: str) -> None:
    try:
        common_passes.ShapeInferencePass(check_type=False, strict_mode=False, data_prop=True)(model)
    except (onnx.shape_inference.InferenceError, ValueError) as e:
        logger.info("canonicalize-attn: shape inference %s failed (%s)", when, e)


def _type_untyped_chains(model: ir.Model, rules: pattern.RewriteRuleSet) -> bool:
    """Type (and fold) the graph when that is what keeps its Softmax->MatMul chains from
    matching; True when the graph changed.

    Exporters other than torch.export (TorchScript's ``dynamo=False``, Optimum) leave
    intermediate values untyped, and build reshape targets from ``Shape`` values; ONNX
    shape inference with data propagation types them. Types are kept only when a chain
    then matches, so a model without attention serializes as it came. When typing alone
    matches nothing, the constant shape arithmetic is folded (``fold-constants``' rules:
    TorchScript's mask ``Expand`` targets and initializers that kept the exporter's
    symbolic dims leave masks and K/V head dims symbolic until then) and the graph typed
    again; a graph with unrecognised chains may so come out folded (and ``modified``).
    """
    if not _unrecognised_chains(model) or _has_decomposed(model, rules):
        return False
    before = _value_types(model)
    _infer(model, "of the untyped graph")
    matched = _has_decomposed(model, rules)
    # When the chains match, fold too, so sequence dims the exporter computes from Shape
    # values become static where the graph is (as after fold-constants,infer-shapes), and
    # self-attention's Q and K lengths compare equal.
    folded = fold(model, _FOLD_LIMIT)
    if folded:
        _infer(model, "after folding")
        matched = matched or _has_decomposed(model, rules)
    if not matched and symbolic_shapes.name_dims(model):
        # Dynamic batch/sequence axes: ONNX's inference names each unknown dim afresh.
        matched = _has_decomposed(model, rules)
    if matched:
        logger.info("canonicalize-attn: typed and folded the graph to match its attention chains")
        return True
    for value, shape, type_ in before:
        value.shape, value.type = shape, type_
    return folded


def _raise_opset(model: ir.Model) -> None:
    old = model.opset_imports.get("", 1)
    try:
        ConvertVersionPass(target_version=ATTENTION_OPSET, fallback=True)(model)
    except VersionConverterError as e:
        raise GenzipError(
            f"canonicalize-attn needs opset {ATTENTION_OPSET} but converting from opset {old} failed: {e}",
            f"re-export the model at opset {ATTENTION_OPSET} (torch.onnx.export(..., opset_version=23))",
        ) from e
    if model.opset_imports.get("") != ATTENTION_OPSET:
        raise GenzipError(
            f"canonicalize-attn needs opset {ATTENTION_OPSET} but the ONNX version converter "
            f"could not convert this model from opset {old}",
            f"re-export the model at opset {ATTENTION_OPSET} (torch.onnx.export(..., opset_version=23))",
        )
    # Opset 23 needs IR version 11; converters leave ir_version alone.
    needed = onnx.helper.find_min_ir_version_for([onnx.helper.make_opsetid("", ATTENTION_OPSET)])
    model.ir_version = max(model.ir_version or 0, needed)
    logger.info("canonicalize-attn: raised the default opset from %d to %d", old, ATTENTION_OPSET)


def _attention_nodes(model: ir.Model) -> list[ir.Node]:
    return [n for g in model_graphs(model) for n in g if n.op_type == "Attention" and n.domain in ("", "ai.onnx")]


def _set_metadata(node: ir.Node, wanted: dict[str, str]) -> bool:
    changed = False
    for key, value in wanted.items():
        if node.metadata_props.get(key) != value:
            node.metadata_props[key] = value
            changed = True
    return changed


def _feeds_matmul(softmax: ir.Node) -> bool:
    """Softmax -> MatMul, directly or through TorchScript's NaN guard ``Where(IsNaN(p), 0, p)``."""
    users = [u for u, _ in softmax.outputs[0].uses()]
    users += [w for u in users if u.op_type == "Where" for w, _ in u.outputs[0].uses()]
    return any(u.op_type == "MatMul" for u in users)


def _unrecognised_chains(model: ir.Model) -> int:
    return sum(1 for g in model_graphs(model) for n in g if n.op_type == "Softmax" and _feeds_matmul(n))


def _warn_unrecognised(model: ir.Model) -> None:
    left = _unrecognised_chains(model)
    if left:
        logger.warning(
            "canonicalize-attn: %d Softmax->MatMul chain(s) were not recognised as attention "
            "(untyped values? run infer-shapes first)", left,
        )


class CanonicalizeAttentionPass(GenzipPass):
    name = "canonicalize-attn"
    summary = "rewrite every attention into one canonical 4D opset-23 Attention node"
    ensures_facts = frozenset({"attention-canonical"})

    def noop_problem(self, model: ir.Model, result: GenzipPassResult, later: tuple[GenzipPass, ...]) -> str | None:
        """Finding no attention is a problem only when a later pass needs some.

        A canonical model (a second run) is not: its attention is already canonical.
        """
        users = [p.name for p in later if "attention-canonical" in p.requires_facts]
        if result.stats.get("attention_nodes", 0) or not users:
            return None
        left = _unrecognised_chains(model)
        seen = (f"{left} Softmax->MatMul chain(s) it does not recognise as attention" if left
                else "no Attention node and no MatMul->Softmax->MatMul chain")
        return f"found no attention ({seen}), and {', '.join(users)} after it need(s) attention"

    def run(self, model: ir.Model, context: PassContext) -> GenzipPassResult:
        # Refuse before touching anything, so a refused model is left as it came.
        for node in _attention_nodes(model):
            attn_normalize.check_supported(node)
        rules = attention_rules()
        live_before = live_nodes(model)
        typed = _type_untyped_chains(model, rules)
        untyped = untyped_constants(model)
        raised = model.opset_imports.get("", ATTENTION_OPSET) < ATTENTION_OPSET and _has_decomposed(model, rules)
        if raised:
            _raise_opset(model)
        live_before |= live_nodes(model)  # the converter's nodes, and what folding made
        from_decomposed = rules.apply_to_model(model)
        # Undo the rewriter's typing of Constant outputs, so a model without a match
        # serializes exactly as it came.
        restore_types(untyped)
        if from_decomposed or typed:
            remove_orphans(live_before)  # scale constants, key transposes
        modified = typed or raised or from_decomposed > 0
        stats = {"attention_nodes": 0, "from_decomposed": from_decomposed, "from_3d": 0, "self": 0, "cross": 0}
        for node in _attention_nodes(model):
            d = attn_normalize.head_dim(node)
            if attn_normalize.needs_rebuild(node):
                stats["from_3d"] += attn_normalize.is_3d(node)
                node = attn_normalize.rebuild_4d(node)
                modified = True
            modified |= attn_normalize.normalize_attributes(node, d)
        # ORT's Attention wants the mask's query axis; a decomposed chain's Add broadcast it
        # (TorchScript's PixArt cross-attention mask is [B, H, 1, T]).
        stats["masks_expanded"] = sum(expand_mask_queries(g) for g in model_graphs(model) if isinstance(g, ir.Graph))
        modified |= stats["masks_expanded"] > 0
        # Classified once every node is final: the walk stops at (and names) other attentions.
        sources = Sources()
        for node in _attention_nodes(model):
            found = classify(node, sources)
            wanted = {KIND_KEY: found.kind, INDEX_KEY: str(stats["attention_nodes"])}
            scope = attention_scope(node)
            if scope:
                wanted[SCOPE_KEY] = scope
            if found.kind == UNKNOWN:
                wanted[KIND_REASON_KEY] = found.reason
                logger.warning("canonicalize-attn: attention %d (%s) left unclassified: %s",
                               stats["attention_nodes"], scope or node.name, found.reason)
            elif KIND_REASON_KEY in node.metadata_props:
                del node.metadata_props[KIND_REASON_KEY]
                modified = True
            modified |= _set_metadata(node, wanted)
            stats[found.kind] = stats.get(found.kind, 0) + 1
            stats["attention_nodes"] += 1
        _warn_unrecognised(model)
        return GenzipPassResult(model, modified, stats)
