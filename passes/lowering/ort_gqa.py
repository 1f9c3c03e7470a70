"""``ort-gqa``: a ``--kv-cache`` graph's cached attention as ONNX Runtime's
``com.microsoft.GroupQueryAttention`` on a shared past/present buffer (an ORT-only form).

The canonical cached attention (:mod:`genzip.passes.lowering._gqa_layout`) copies the
whole cache every step (``Concat(past, new)``) and builds a ``[b, 1, s, T]`` mask. Per
layer the pass emits what onnxruntime-genai's model builder emits::

    seqlens_k = Cast<int32>(ReduceSum(attention_mask, 1) - 1)        (shared, [batch])
    total     = Cast<int32>(Shape(attention_mask)[1])                 (shared, scalar)
    o, present.i.key, present.i.value = GroupQueryAttention(
        BSH(q), BSH(k_new), BSH(v_new), past_key_values.i.key, past_key_values.i.value,
        seqlens_k, total, num_heads=H, kv_num_heads=KV, scale=Attention's scale)

``BSH(x)`` is ``Reshape(Transpose(x, [0, 2, 1, 3]), [0, 0, -1])``; ``o`` goes back to the
Attention's ``[b, H, s, d]`` layout. Rotary stays in the graph (the new K is cached after
RoPE, as before). GroupQueryAttention writes the new K/V at rows ``[T - s, T)`` of
``present``: when the runtime binds ``past`` and ``present`` to one ``[b, kv, C, d]``
buffer (``C`` = capacity), nothing is copied; when they are separate (plain
``session.run`` with a ``past_seq``-long past), ``present`` is ``past + new`` as before.

Invariant (fact ``kv-shared-buffer``): every ``present.*`` output is an output of the
GroupQueryAttention that reads the matching ``past_key_values.*`` input as its past;
the model metadata ``genzip.kv_shared_buffer`` says so to the runtime and to
``genai_config.json`` (``past_present_share_buffer``). The mask is GroupQueryAttention's
causal one over ``seqlens_k + 1`` keys per row: ``attention_mask`` is read only as
per-row counts (right padding; left-padded batches are not supported), which is what
the exporter's causal + padding mask is for all-ones masks; the compile's fidelity check
proves it on the example inputs. Refused in one line: a graph without the canonical
cached attention (after ``kv-quant``, ``span-attn``, ``cskv``), a layer that is not in
it, and a sliding-window model (its window is in the mask this pass drops).
"""

from __future__ import annotations

import json

import onnx_ir as ir

from genzip.errors import GenzipError
from genzip.ir_build import NodeBuilder
from genzip.metadata import CSKV_KEY, KV_CAPACITY_KEY, KV_QUANT_KEY, KV_SHARED_KEY
from genzip.passes.infra.context import PassContext
from genzip.passes.infra.contract import GenzipPass, GenzipPassResult, NoOptions
from genzip.passes.lowering._gqa_layout import GQA_DOMAIN, GQA_OP, CachedAttention, find_cached_attention

_FIX = "run ort-gqa on a plain --kv-cache graph (before or without kv-quant, span-attn and cskv)"


def _int_attr(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return default if attr is None else attr.as_int()


def _check(layer: CachedAttention) -> tuple[int, int, int]:
    """(query heads, KV heads, head dim) of a layer GroupQueryAttention can take, else a GenzipError."""
    attn = layer.attention
    q, k_new = attn.inputs[0], layer.key_concat.inputs[1]
    where = f"ort-gqa: the Attention reading {layer.key_out.name}"
    if q.shape is None or k_new.shape is None or len(q.shape) != 4 or len(k_new.shape) != 4:
        raise GenzipError(f"{where} has Q/K of unknown or non-4D shape", _FIX)
    heads, kv_heads, dim = q.shape[1], k_new.shape[1], q.shape[3]
    if not all(isinstance(x, int) for x in (heads, kv_heads, dim)) or heads % kv_heads:
        raise GenzipError(f"{where} has heads {heads} / KV heads {kv_heads} / head dim {dim}, not fixed "
                          "with query heads a multiple of KV heads", _FIX)
    axis = layer.key_concat.attributes["axis"].as_int()
    if axis not in (2, -2) or layer.value_concat.attributes["axis"].as_int() != axis:
        raise GenzipError(f"{where}: the cache Concat is on axis {axis}, not the sequence axis 2", _FIX)
    extra = [i for i in (4, 5, 6) if len(attn.inputs) > i and attn.inputs[i] is not None]
    used_outputs = [o for o in attn.outputs[1:] if o.uses() or o.is_graph_output()]
    if extra or used_outputs or _int_attr(attn, "qk_matmul_output_mode", 0) != 0:
        raise GenzipError(f"{where} uses past_key/nonpad_kv_seqlen inputs or extra outputs", _FIX)
    if _int_attr(attn, "is_causal", 0) != 0 or len(attn.inputs) < 4 or attn.inputs[3] is None:
        raise GenzipError(f"{where} has no explicit mask (is_causal or none): not the exporter's causal + "
                          "padding mask", _FIX)
    if q.dtype != layer.key_concat.inputs[0].dtype:
        raise GenzipError(f"{where}: Q is {q.dtype} but the cache is {layer.key_concat.inputs[0].dtype}", _FIX)
    return heads, kv_heads, dim


def _bsh(b: NodeBuilder, x: ir.Value) -> ir.Value:
    """``[b, h, s, d]`` -> ``[b, s, h * d]``, GroupQueryAttention's layout."""
    return b.op("Reshape", b.op("Transpose", x, perm=[0, 2, 1, 3]), b.ints(0, 0, -1))


def _lengths(graph: ir.Graph, mask: ir.Value, ids: ir.Value) -> tuple[ir.Value, ir.Value, ir.Value]:
    """(seqlens_k, total_sequence_length, query_seqlens): the first two from ``attention_mask``
    as onnxruntime-genai's builder does; ``query_seqlens`` = the run's ``seq`` for every row
    (all valid), which lets a batch of several rows take a multi-token chunk after a past."""
    b = NodeBuilder("ort_gqa.lengths")
    summed = b.op("ReduceSum", mask, b.ints(1), keepdims=0)
    seqlens = b.op("Cast", b.op("Sub", summed, b.const(1)), to=ir.DataType.INT32)
    total = b.op("Cast", b.op("Gather", b.op("Shape", mask), b.const(1), axis=0), to=ir.DataType.INT32)
    ids_shape = b.op("Shape", ids)
    seq = b.op("Slice", ids_shape, b.ints(1), b.ints(2))
    batch = b.op("Slice", ids_shape, b.ints(0), b.ints(1))
    query = b.op("Cast", b.op("Expand", seq, batch), to=ir.DataType.INT32)
    graph.insert_before(next(iter(graph)), b.nodes)
    seqlens.name, total.name = "ort_gqa.seqlens_k", "ort_gqa.total_sequence_length"
    query.name = "ort_gqa.query_seqlens"
    return seqlens, total, query


def _rewrite(graph: ir.Graph, layer: CachedAttention, dims: tuple[int, int, int], lengths) -> None:
    heads, kv_heads, dim = dims
    attn = layer.attention
    b = NodeBuilder(f"{layer.key_out.name}.gqa")
    attrs = {"num_heads": heads, "kv_num_heads": kv_heads}
    scale = attn.attributes.get("scale")
    if scale is not None:
        attrs["scale"] = scale.as_float()
    softcap = attn.attributes.get("softcap")
    if softcap is not None and softcap.as_float() != 0.0:
        attrs["softcap"] = softcap.as_float()
    past_k, k_new = layer.key_concat.inputs
    past_v, v_new = layer.value_concat.inputs
    seqlens, total, query = lengths
    # Inputs 7-15 (rotary caches, position_ids, bias, sinks, scales, q/k norms) stay empty.
    out, present_k, present_v = b.op(GQA_OP, _bsh(b, attn.inputs[0]), _bsh(b, k_new), _bsh(b, v_new), past_k, past_v,
                                     seqlens, total, *[None] * 9, query, _outputs=3, _domain=GQA_DOMAIN, **attrs)
    out4 = b.op("Transpose", b.op("Reshape", out, b.ints(0, 0, heads, dim)), perm=[0, 2, 1, 3])
    graph.insert_before(attn, b.nodes)
    attn.outputs[0].replace_all_uses_with(out4)
    outputs = list(graph.outputs)
    for old, new in ((layer.key_out, present_k), (layer.value_out, present_v)):
        name, dtype = old.name, old.dtype
        shape = ir.Shape([*old.shape[:2], "present_seq", old.shape[3]]) if old.shape is not None else None
        old.name = f"{name}.concat"  # frees the name for GroupQueryAttention's output
        graph.outputs[outputs.index(old)] = new
        new.name, new.dtype, new.shape = name, dtype, shape
    graph.remove([attn, layer.key_concat, layer.value_concat], safe=True)


class OrtGqaPass(GenzipPass):
    name = "ort-gqa"
    summary = ("--kv-cache attention as ORT's com.microsoft.GroupQueryAttention on a shared past/present "
               "buffer (ORT-only; no per-step cache copy)")
    Options = NoOptions
    ensures_facts = frozenset({"kv-shared-buffer"})
    conflicts_facts = {"kv-int8": "kv-quant's int8 cache has no Concat(past, new) of floats left to rewrite",
                       "kv-lowrank": "cskv's cache holds low-rank features, not GroupQueryAttention's K/V rows"}

    def run(self, model: ir.Model, context: PassContext) -> GenzipPassResult:
        for key, what in ((KV_CAPACITY_KEY, "span-attn's evicting cache"), (KV_QUANT_KEY, "kv-quant's int8 cache"),
                          (CSKV_KEY, "cskv's low-rank cache")):
            if key in model.metadata_props:
                raise GenzipError(f"ort-gqa cannot lower {what}: GroupQueryAttention keeps full-precision rows", _FIX)
        config = getattr(context.torch_module, "config", None)
        window = getattr(config, "sliding_window", None) if getattr(config, "use_sliding_window", True) else None
        if isinstance(window, int) and window < int(getattr(config, "max_position_embeddings", 0) or 0):
            raise GenzipError(f"ort-gqa: the model attends within a sliding window of {window} tokens, which lives "
                              "in the mask this pass replaces", "compile it without ort-gqa")
        graph = model.graph
        layers, problems = find_cached_attention(graph)
        if not layers or problems:
            why = problems[0] if problems else "no present.*.key output"
            raise GenzipError(f"ort-gqa: the graph has no canonical cached attention to lower ({why})", _FIX)
        named = {v.name: v for v in graph.inputs}
        mask, ids = named.get("attention_mask"), named.get("input_ids")
        if mask is None or ids is None or mask.dtype != ir.DataType.INT64:
            raise GenzipError("ort-gqa: the graph has no input_ids and int64 attention_mask inputs to count the "
                              "tokens from", "compile a transformers causal LM with --kv-cache")
        dims = [_check(layer) for layer in layers]
        lengths = _lengths(graph, mask, ids)
        for layer, dim in zip(layers, dims):
            _rewrite(graph, layer, dim, lengths)
        from onnx_ir.passes.common import RemoveUnusedNodesPass

        before = len(list(graph))
        RemoveUnusedNodesPass()(model)
        model.opset_imports.setdefault(GQA_DOMAIN, 1)
        model.metadata_props[KV_SHARED_KEY] = json.dumps({"op": f"{GQA_DOMAIN}.{GQA_OP}", "layers": len(layers)})
        stats = {"lowered": len(layers), "mask_nodes_removed": before - len(list(graph)),
                 "heads": dims[0][0], "kv_heads": dims[0][1]}
        return GenzipPassResult(model, True, stats)

