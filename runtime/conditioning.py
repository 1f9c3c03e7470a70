"""Conditioning of a compiled DiT artifact: text embeddings or class labels.

A DiT artifact is conditioned through exactly one graph input:

* ``encoder_hidden_states`` (PixArt-style text DiT): float ``[B, T, C]`` prompt
  embeddings; the unconditional half of a CFG pair is the negative prompt
  embeddings (zeros by default);
* ``class_labels`` (class-conditional DiT): int64 ``[B]`` labels in
  ``[0, null)``; the unconditional half is the *null class* ``null`` (DiT's
  ``num_embeds_ada_norm``, 1000 for ImageNet), the extra row of the class
  embedding table that classifier-free-guidance training dropped labels to.

A text DiT exported from a forward that takes ``encoder_attention_mask`` (PixArt) also
has that input (int64 ``[B, T]``, 1 = keep the prompt token); callers that give none get
all ones (:func:`with_prompt_mask`). An SD3-style DiT also reads the prompt through
``pooled_projections`` (float ``[B, P]``, the text encoder's pooled state): a second
per-prompt input, passed beside the pair as ``extra`` (name -> (cond, uncond)).

Everything downstream (sampler, plan search, caches) handles the pair
``(cond, uncond)`` of arrays of the artifact's conditioning input and stacks it as
``[uncond, cond]``, the order share-attn's ASC records in the manifest.

Invariant: every pair returned here has matching shapes and dtypes, and class
labels are validated against the artifact's null class.
"""

from __future__ import annotations

import numpy as np

from genzip.backends.runner import load_npz, np_dtype, traced_shape
from genzip.errors import GenzipError

TEXT, CLASS = "encoder_hidden_states", "class_labels"
MASK = "encoder_attention_mask"  # text DiTs whose forward takes one (PixArt): [B, T] keep-mask
POOLED = "pooled_projections"  # SD3-style DiTs: the prompt's pooled text state, [B, P]


def check_extra(model, extra: dict[str, tuple[np.ndarray, np.ndarray]], batch: int) -> None:
    """Every per-prompt input besides the main one is given (SD3's pooled state), for ``batch`` rows."""
    if POOLED in {s["name"] for s in model.inputs} and POOLED not in extra:
        raise GenzipError(
            f"artifact {model.folder} also reads the prompt through '{POOLED}' (SD3-style), which this "
            f"command does not make",
            "evaluate it with genzip eval on a trained preset, or run it in its diffusers pipeline (load_pipeline)",
        )
    for name, (cond, uncond) in extra.items():
        if cond.shape != uncond.shape or len(cond) != batch:
            raise GenzipError(f"'{name}' has {len(cond)} rows (negative {uncond.shape}) for a batch of {batch}",
                              "give one cond and one uncond row per image")


def prompt_mask(mask, dtype: np.dtype | None, inputs: list[dict], model: str) -> np.ndarray | None:
    """The keep-mask to feed an artifact: ``mask`` (a tensor or array, ``[B, T]`` or
    ``[B, 1, T]``) as ``dtype``, the graph's mask input dtype (None: the graph has no mask
    input); None when no mask is given, or the graph has none and the mask is all ones. A mask
    with zeros for a graph without the input is refused (``model`` names it, ``inputs`` give
    the accepted text shape)."""
    if mask is None:
        return None
    value = mask.detach().cpu().numpy() if hasattr(mask, "detach") else np.asarray(mask)
    value = value.reshape(value.shape[0], -1) if value.ndim == 3 and value.shape[1] == 1 else value
    if dtype is not None:
        return value.astype(dtype)
    if not np.all(value != 0):
        text = next((s["shape"] for s in inputs if s["name"] == TEXT), None)
        raise GenzipError(
            f"this genzip {model} takes no encoder_attention_mask (its exported graph has no mask input), "
            "and the mask given has zeros: padded prompt tokens would be attended to, unlike in PyTorch",
            f"pass prompt embeddings without padding (mask all ones; the artifact takes {text}), "
            f"recompile it with this genzip (PixArt and UNet exports now have the mask input) "
            f"or use the PyTorch {model} for padded prompts",
        )
    return None


def with_prompt_mask(feeds: dict[str, np.ndarray], inputs: list[dict]) -> dict[str, np.ndarray]:
    """``feeds`` plus an all-ones ``encoder_attention_mask`` (every prompt token kept, what an
    artifact without the input computes) when the artifact takes one and none was given, so
    callers that know nothing of masks (sampler, plan search) run mask-taking artifacts."""
    spec = next((s for s in inputs if s["name"] == MASK), None)
    if spec is None or MASK in feeds or TEXT not in feeds:
        return feeds
    text = feeds[TEXT]
    return {**feeds, MASK: np.ones(text.shape[:2], dtype=np_dtype(spec["dtype"]))}


def conditioning_input(model) -> str:
    """The name of the artifact's conditioning input (``TEXT`` or ``CLASS``)."""
    names = {s["name"] for s in model.inputs}
    for name in (TEXT, CLASS):
        if name in names:
            return name
    raise GenzipError(
        f"artifact {model.folder} has neither an 'encoder_hidden_states' nor a 'class_labels' input, "
        f"so it is not a conditioned DiT",
        "sample a DiT artifact (e.g. genzip-compile tiny-pixart or tiny-dit)",
    )


def _table_rows(folder: str, onnx_name: str) -> int | None:
    """Rows of the embedding table the graph gathers with ``class_labels`` (weights not loaded)."""
    import os

    import onnx

    graph = onnx.load(os.path.join(folder, onnx_name), load_external_data=False).graph
    dims = {init.name: list(init.dims) for init in graph.initializer}
    rows = {dims[n.input[0]][0] for n in graph.node
            if n.op_type == "Gather" and n.input[1:2] == [CLASS] and n.input[0] in dims}
    return rows.pop() if len(rows) == 1 else None


def null_class(model) -> int:
    """The label of the unconditional (null) class: the preset's ``num_embeds_ada_norm``, else the
    last row of the class embedding table (DiT appends the null row after the real classes)."""
    preset = model.manifest.get("source_info", {}).get("preset")
    if preset:
        from genzip.frontend.presets import get_preset

        value = get_preset(preset).config.get("num_embeds_ada_norm")
        if value:
            return int(value)
    rows = _table_rows(model.folder, model.manifest["model"])
    if rows is None or rows < 2:
        raise GenzipError(
            f"cannot tell the null class of {model.folder}: no single class-embedding table is gathered "
            f"by 'class_labels'", "compile the DiT from a preset or an unmodified diffusers folder",
        )
    return rows - 1


def check_labels(labels: np.ndarray, null: int, where: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise GenzipError(f"{where}: class labels must be a non-empty 1-D integer array, got "
                          f"{labels.dtype} {list(labels.shape)}", "give int64 class_labels of shape [batch]")
    bad = labels[(labels < 0) | (labels >= null)]
    if bad.size:
        raise GenzipError(f"{where}: class label {int(bad[0])} is out of range [0, {null})",
                          f"use labels 0..{null - 1} ({null} is the null class used for CFG)")
    return labels.astype(np.int64)


def class_pair(model, labels: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    null = null_class(model)
    cond = check_labels(labels, null, where)
    return cond, np.full_like(cond, null)


def default_conditioning(model, batch: int, seed: int, distinct: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random ``(cond, uncond)`` of the artifact's conditioning: prompt embeddings of its
    text shape (negative: zeros), or class labels (negative: the null class; ``distinct``: no
    label twice while there are enough classes)."""
    rng = np.random.default_rng(seed + 1)
    if conditioning_input(model) == CLASS:
        null = null_class(model)
        if distinct and batch <= null:
            return class_pair(model, np.sort(rng.choice(null, size=batch, replace=False)), "default labels")
        return class_pair(model, rng.integers(0, null, size=batch), "default labels")
    spec = next(s for s in model.inputs if s["name"] == TEXT)
    tokens, dim = traced_shape(spec["shape"], model.manifest)[1:3]
    cond = rng.standard_normal((batch, tokens, dim)).astype(np.float32)
    return cond, np.zeros_like(cond)


def parse_labels(text: str) -> np.ndarray:
    try:
        return np.array([int(v) for v in text.split(",") if v.strip()], dtype=np.int64)
    except ValueError:
        raise GenzipError(f"--labels '{text}' is not a comma-separated list of integers",
                          "pass e.g. --labels 207,360") from None


def from_npz(model, path: str) -> tuple[np.ndarray, np.ndarray]:
    """``(cond, uncond)`` from an .npz: ``class_labels`` for a class DiT; ``prompt_embeds`` (and
    ``negative_prompt_embeds``) for a text DiT."""
    data = load_npz(path)
    if conditioning_input(model) == CLASS:
        if CLASS not in data:
            raise GenzipError(f"{path} has no 'class_labels' array, but {model.folder} is class-conditioned",
                              "save class_labels (int64 [B]) with numpy.savez, or pass --labels")
        return class_pair(model, data[CLASS], path)
    if "prompt_embeds" not in data:
        raise GenzipError(f"{path} has no 'prompt_embeds' array", "save prompt_embeds [B, T, C] with numpy.savez")
    cond = data["prompt_embeds"].astype(np.float32)
    if cond.ndim != 3:
        raise GenzipError(f"{path}: prompt_embeds has shape {list(cond.shape)}", "give [batch, tokens, channels]")
    uncond = data.get("negative_prompt_embeds", np.zeros_like(cond)).astype(np.float32)
    return cond, uncond
