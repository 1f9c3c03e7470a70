"""Decoder export of a transformers causal LM with a KV cache (``genzip-compile --kv-cache``).

One graph serves prefill and decode. Inputs ``input_ids`` / ``position_ids``
``[batch, seq]`` (int64), ``attention_mask`` ``[batch, total_seq]`` (int64, ones
for real tokens), ``past_key_values.{i}.key`` / ``.value`` ``[batch, kv_heads,
past_seq, head_dim]`` (``past_seq`` 0 for prefill); outputs ``logits`` ``[batch,
seq, vocab]`` and ``present.{i}.key`` / ``.value`` ``[batch, kv_heads, total_seq,
head_dim]`` (``total_seq = past_seq + seq``). Every axis but the head axes is dynamic.

The exporter writes each layer's cache update as ``Concat(past, new)`` feeding a
plain ONNX ``Attention(Q, K_total, V_total, mask)`` (no ``past_key`` inputs), so
``present`` is a fresh tensor the graph computes, not an alias of ``past``.

Invariant: the export is checked against transformers eager with a
``DynamicCache`` over a prefill from an empty cache plus ``DECODE_STEPS`` one-token
decode steps, feeding each step the previous step's ``present`` (ORT) and cache
(eager); every step's logits must reach ``EXPORT_MIN_COSINE``.
"""

from __future__ import annotations

import inspect
import os
import tempfile
from typing import Any

import numpy as np
import onnx_ir as ir
import torch

from genzip.errors import GenzipError
from genzip.frontend import onnx_names
from genzip.frontend.fx_cleanup import remove_noop_ops
from genzip.frontend.torch_export import EXPORT_ERRORS, OPSET, _quiet_exporter, first_line, moe_routing_error
from genzip.frontend.verify import fidelity

DECODE_STEPS = 4
# Trace sizes: torch.export specializes 0/1-sized dims, so trace at batch 2 with a
# 3-token past and a 4-token chunk; prefill (past 0) and decode (seq 1) are checked after.
_TRACE_BATCH, _TRACE_PAST, _TRACE_SEQ = 2, 3, 4


def past_names(layers: int) -> list[str]:
    return [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]


def present_names(layers: int) -> list[str]:
    return [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]


def cache_spec(config) -> dict[str, Any]:
    """The shape facts a runtime needs to allocate the cache and check prompts."""
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    return {
        "layers": int(config.num_hidden_layers),
        "num_heads": heads,
        "kv_heads": int(getattr(config, "num_key_value_heads", None) or heads),
        "head_dim": head_dim,
        "vocab_size": int(config.vocab_size),
        "max_positions": int(getattr(config, "max_position_embeddings", 0) or 0),
    }


class KVCacheDecoder(torch.nn.Module):
    """Flat-tensor wrapper: ``(input_ids, attention_mask, position_ids, *past)`` ->
    ``(logits, *present)``, building a transformers ``DynamicCache`` from ``past``."""

    def __init__(self, model: torch.nn.Module, layers: int):
        super().__init__()
        self.model = model
        self.layers = layers
        # transformers 5.x renamed past_key_values to cache (the old name still works, with a warning).
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"

    def forward(self, input_ids, attention_mask, position_ids, *past):
        from transformers import DynamicCache

        cache = DynamicCache(ddp_cache_data=[(past[2 * i], past[2 * i + 1]) for i in range(self.layers)])
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         **{self._cache_arg: cache}, use_cache=True)
        present = []
        for layer in (out.get("cache") or out.get("past_key_values")).layers:
            present += [layer.keys, layer.values]
        return (out.logits, *present)


def _call(spec: dict[str, Any], batch: int, past: int, seq: int, g: torch.Generator) -> tuple:
    ids = torch.randint(0, spec["vocab_size"], (batch, seq), generator=g)
    mask = torch.ones(batch, past + seq, dtype=torch.long)
    pos = torch.arange(past, past + seq).expand(batch, seq).contiguous()
    kv = [torch.randn(batch, spec["kv_heads"], past, spec["head_dim"], generator=g)
          for _ in range(2 * spec["layers"])]
    return (ids, mask, pos, *kv)


def _export(wrapper: KVCacheDecoder, args: tuple, spec: dict[str, Any], what: str) -> ir.Model:
    dyn = torch.export.Dim.DYNAMIC
    # *past is one positional parameter for torch.export: its spec is one tuple.
    shapes = (*({0: dyn, 1: dyn},) * 3, ({0: dyn, 2: dyn},) * (2 * spec["layers"]))
    try:
        with torch.no_grad(), _quiet_exporter():
            ep = torch.export.export(wrapper, args, dynamic_shapes=shapes, strict=False)
            remove_noop_ops(ep)
            model = torch.onnx.export(ep, dynamo=True, opset_version=OPSET, verbose=False).model
    except (torch.onnx.OnnxExporterError, *EXPORT_ERRORS) as e:
        routing = moe_routing_error(wrapper, e, what)
        if routing is not None:
            raise routing from e
        raise GenzipError(
            f"could not export {what} with a KV cache: {first_line(e)}",
            "compile it without --kv-cache, or export it to ONNX yourself and pass the .onnx file",
        ) from e
    _name_io(model.graph, spec["layers"])
    _native_gqa(model)
    return model


def _const_ints(value: ir.Value) -> list[int] | None:
    tensor = value.const_value
    if tensor is None and value.producer() is not None and value.producer().op_type == "Constant":
        tensor = value.producer().attributes["value"].as_tensor()
    return None if tensor is None else [int(x) for x in np.asarray(tensor.numpy()).ravel()]


def _repeated_kv_source(value: ir.Value) -> ir.Value | None:
    """``x`` when ``value`` is transformers' ``repeat_kv(x)``: ``Reshape(Expand(Unsqueeze(x, 2)))``
    from ``[b, kv_heads, t, d]`` to ``[b, heads, t, d]`` (each KV head repeated in place)."""
    reshape = value.producer()
    expand = reshape.inputs[0].producer() if reshape is not None and reshape.op_type == "Reshape" else None
    unsqueeze = expand.inputs[0].producer() if expand is not None and expand.op_type == "Expand" else None
    if unsqueeze is None or unsqueeze.op_type != "Unsqueeze" or _const_ints(unsqueeze.inputs[1]) != [2]:
        return None
    source = unsqueeze.inputs[0]
    if source.shape is None or value.shape is None or len(source.shape) != 4 or len(value.shape) != 4:
        return None
    kv, heads = source.shape[1], value.shape[1]
    ok = isinstance(kv, int) and isinstance(heads, int) and heads % kv == 0 and source.shape[3] == value.shape[3]
    return source if ok else None


def _native_gqa(model: ir.Model) -> int:
    """Feed every ``Attention`` the un-repeated K/V: ONNX ``Attention`` groups query heads over
    KV heads itself (query head h reads KV head h // (heads / kv_heads), repeat_kv's order),
    so the two per-layer copies of the whole cache that repeat_kv makes at every decode step
    go away. Returns the inputs rewired (the export check that follows proves the function)."""
    rewired = 0
    for node in model.graph:
        if node.op_type != "Attention" or len(node.inputs) < 3:
            continue
        for index in (1, 2):
            source = _repeated_kv_source(node.inputs[index])
            if source is not None:
                node.replace_input_with(index, source)
                rewired += 1
    if rewired:
        from onnx_ir.passes.common import RemoveUnusedNodesPass

        RemoveUnusedNodesPass()(model)
    return rewired


def _sym(value: ir.Value, axis: int) -> str | None:
    dim = value.shape[axis] if value.shape is not None else None
    return dim.value if isinstance(dim, ir.SymbolicDim) else None


def _name_io(graph: ir.Graph, layers: int) -> None:
    """Graph inputs/outputs get the documented names, symbolic dims ``batch``, ``seq``,
    ``past_seq`` and ``total_seq`` (the exporter gives each layer's past its own symbol)."""
    names = ["input_ids", "attention_mask", "position_ids", *past_names(layers)]
    for value, name in zip(graph.inputs, names):
        onnx_names.rename_value(graph, value, name)
    onnx_names.name_outputs(graph, ["logits", *present_names(layers)])
    renames = {}
    for value in graph.inputs:
        renames[_sym(value, 0)] = "batch"
    ids, mask = graph.inputs[0], graph.inputs[1]
    renames[_sym(ids, 1)] = "seq"
    renames[_sym(mask, 1)] = "total_seq"
    for value in graph.inputs[3:]:
        renames[_sym(value, 2)] = "past_seq"
    for value in graph.outputs[1:]:
        renames[_sym(value, 2)] = "total_seq"
    for old, new in renames.items():
        if old and old != new:
            onnx_names.name_symbolic_dim(graph, old, new)


def _feeds(args: tuple, names: list[str]) -> dict[str, np.ndarray]:
    return {n: t.detach().cpu().numpy().copy() for n, t in zip(names, args)}


def _verify(model: ir.Model, wrapper: KVCacheDecoder, spec: dict[str, Any], seed: int, what: str) -> dict:
    """Prefill from an empty cache + ``DECODE_STEPS`` decode steps, ORT vs eager; worst fidelity."""
    from genzip.ort_session import make_session

    names = [v.name for v in model.graph.inputs]
    g = torch.Generator().manual_seed(seed + 1)
    args = _call(spec, 1, 0, 5, g)
    worst = None
    with tempfile.TemporaryDirectory(prefix="genzip-kv-") as tmp:
        path = os.path.join(tmp, "model.onnx")
        ir.save(model, path, external_data="model.onnx.data")
        session = make_session(path, threads=2)
        for step in range(DECODE_STEPS + 1):
            with torch.no_grad():
                expected = [t.numpy() for t in wrapper(*args)]
            got = session.run(None, _feeds(args, names))
            fid = fidelity(got, expected, ["logits", *present_names(spec["layers"])],
                           f"{what} ({'prefill' if step == 0 else f'decode step {step}'} with a KV cache)")
            worst = fid if worst is None or fid["cosine"] < worst["cosine"] else worst
            total = args[1].shape[1]
            nxt = torch.from_numpy(got[0][:, -1].argmax(-1))[:, None]
            args = (nxt, torch.ones(1, total + 1, dtype=torch.long), torch.tensor([[total]]),
                    *(torch.from_numpy(p) for p in got[1:]))
    worst["checked"] = f"prefill + {DECODE_STEPS} decode steps vs transformers eager with a DynamicCache"
    return worst


def export_kv_cache(module: torch.nn.Module, *, seed: int, what: str) -> dict[str, Any]:
    """Export and verify ``module`` with a KV cache; returns ``model``, ``example_inputs``,
    ``reference_outputs`` (eager, by output name), ``fidelity`` and ``cache`` (:func:`cache_spec`)."""
    spec = cache_spec(module.config)
    wrapper = KVCacheDecoder(module, spec["layers"]).eval()
    args = _call(spec, _TRACE_BATCH, _TRACE_PAST, _TRACE_SEQ, torch.Generator().manual_seed(seed))
    model = _export(wrapper, args, spec, what)
    fid = _verify(model, wrapper, spec, seed, what)
    with torch.no_grad():
        reference = [t.numpy().copy() for t in wrapper(*args)]
    example = _feeds(args, [v.name for v in model.graph.inputs])
    return {
        "model": model,
        "example_inputs": example,
        "reference_outputs": {v.name: r for v, r in zip(model.graph.outputs, reference)},
        "fidelity": fid,
        "cache": spec,
    }
