"""onnxruntime-genai's ``genai_config.json`` for a ``--kv-cache`` LLM artifact.

With it, ``onnxruntime_genai.Model(ARTIFACT)`` runs genzip's own decoder graph in its C++
generate loop (tokenizer, search, cache handling), the deployment path a Python loop
around ONNX Runtime cannot match on small models. The graph already uses
onnxruntime-genai's default names (``input_ids``, ``attention_mask``, ``position_ids``,
``past_key_values.%d.key|value`` -> ``logits``, ``present.%d.key|value``); the cache is
``Concat(past, new)``, so the config turns off ``past_present_share_buffer`` (the
builder's in-place GroupQueryAttention form), except after ``ort-gqa`` (model metadata
``genzip.kv_shared_buffer``), whose graph is that form: then it is on, and
onnxruntime-genai binds one ``max_length`` buffer per cache tensor as past and present.

Invariant: the config is written only when onnxruntime-genai can bind the graph as it
is: exactly those inputs and outputs, and float32/float16 ``[batch, kv_heads, seq,
head_dim]`` caches with one dtype (``kv-quant``'s int8 cache and its scales, ``cskv``'s
low-rank features, ``span-attn``'s evicting cache, or a cache a pass re-shaped, are not its
layout). Otherwise the manifest says why not.
The tokenizer files are copied next to it, where onnxruntime-genai looks for them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any

import onnx_ir as ir

from genzip.metadata import CSKV_KEY, KV_CAPACITY_KEY, KV_SHARED_KEY

CONFIG_NAME = "genai_config.json"
GENAI_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                         "vocab.json", "merges.txt", "added_tokens.json")
# Model types onnxruntime-genai's decoder-only path accepts; others run as "llama", since
# the graph is self-contained (rotary, masks and GQA are inside it).
KNOWN_TYPES = ("llama", "mistral", "qwen2", "qwen3", "phi", "phi3", "gemma", "gemma2", "granite", "olmo", "nemotron")
_PAST = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")
_PRESENT = re.compile(r"^present\.(\d+)\.(key|value)$")
_FLOATS = {ir.DataType.FLOAT: "float32", ir.DataType.FLOAT16: "float16"}


def unsupported(model: ir.Model, layers: int) -> str | None:
    """Why onnxruntime-genai cannot bind this graph as it is, or None when it can."""
    if KV_CAPACITY_KEY in model.metadata_props:
        return ("span-attn's evicting cache keeps at most a fixed number of tokens per layer or KV head "
                f"({KV_CAPACITY_KEY}), while onnxruntime-genai binds past/present as the whole sequence")
    if CSKV_KEY in model.metadata_props:
        return "cskv's cache holds low-rank features (and a window), not onnxruntime-genai's layout"
    inputs = {v.name: v for v in model.graph.inputs}
    outputs = {v.name: v for v in model.graph.outputs}
    past = [n for n in inputs if _PAST.match(n)]
    present = [n for n in outputs if _PRESENT.match(n)]
    extra_in = sorted(set(inputs) - {"input_ids", "attention_mask", "position_ids", *past})
    extra_out = sorted(set(outputs) - {"logits", *present})
    if extra_in or extra_out:
        return f"the graph has inputs/outputs onnxruntime-genai does not feed: {', '.join(extra_in + extra_out)}"
    if len(past) != 2 * layers or len(present) != 2 * layers:
        return f"{len(past)} past and {len(present)} present cache tensors for {layers} layers"
    dtypes = set()
    for value in [inputs[n] for n in past] + [outputs[n] for n in present]:
        dtype = value.type.dtype if value.type is not None else None
        if dtype not in _FLOATS or value.shape is None or len(value.shape) != 4:
            return (f"cache tensor '{value.name}' is {dtype.name if dtype else 'untyped'} of rank "
                    f"{len(value.shape) if value.shape is not None else '?'}; onnxruntime-genai binds float "
                    "[batch, kv_heads, seq, head_dim] caches")
        dtypes.add(dtype)
    if len(dtypes) != 1:
        return "the cache tensors mix dtypes"
    return None


def _generation(hf_folder: str) -> dict[str, Any]:
    path = os.path.join(hf_folder, "generation_config.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def config(kv: dict, model_type: str, generation: dict[str, Any], shared: bool = False) -> dict[str, Any]:
    """The genai_config.json content for a graph :func:`unsupported` accepts; ``shared``:
    the graph updates its cache in place (``ort-gqa``)."""
    eos = generation.get("eos_token_id", kv.get("eos_token_id"))
    eos = eos if eos is not None else 0
    first_eos = eos[0] if isinstance(eos, list) and eos else eos
    decoder = {
        "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
        "filename": "model.onnx",
        "head_size": kv["head_dim"], "hidden_size": kv["num_heads"] * kv["head_dim"],
        "num_attention_heads": kv["num_heads"], "num_key_value_heads": kv["kv_heads"],
        "num_hidden_layers": kv["layers"],
        "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask", "position_ids": "position_ids",
                   "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
        "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value"},
    }
    return {
        "model": {
            "bos_token_id": generation.get("bos_token_id", first_eos), "eos_token_id": eos,
            "pad_token_id": generation.get("pad_token_id", first_eos), "context_length": kv["max_positions"],
            "vocab_size": kv["vocab_size"], "type": model_type if model_type in KNOWN_TYPES else "llama",
            "decoder": decoder,
        },
        "search": {
            "max_length": kv["max_positions"], "min_length": 0, "do_sample": False, "num_beams": 1,
            "num_return_sequences": 1, "past_present_share_buffer": shared, "temperature": 1.0, "top_k": 50,
            "top_p": 1.0, "repetition_penalty": 1.0, "length_penalty": 1.0, "diversity_penalty": 0.0,
            "no_repeat_ngram_size": 0, "early_stopping": True,
        },
    }


def write_genai_config(model: ir.Model, kv: dict, model_type: str, folder: str) -> tuple[list[str], dict]:
    """Write the config and tokenizer copies into the staged artifact ``folder``.
    Returns (file names written, the manifest's ``genai`` section)."""
    why = unsupported(model, kv["layers"])
    if why is not None:
        return [], {"config": None, "why_not": why}
    hf = os.path.join(folder, kv.get("hf_dir", "hf"))
    names = []
    for name in GENAI_TOKENIZER_FILES:
        if os.path.isfile(os.path.join(hf, name)):
            shutil.copyfile(os.path.join(hf, name), os.path.join(folder, name))
            names.append(name)
    with open(os.path.join(folder, CONFIG_NAME), "w") as f:
        json.dump(config(kv, model_type, _generation(hf), KV_SHARED_KEY in model.metadata_props), f, indent=1)
    return [CONFIG_NAME, *names], {"config": CONFIG_NAME, "tokenizer": names}
