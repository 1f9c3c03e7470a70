"""Example calls for Hugging Face model families, derived from config + forward signature.

Diffusers denoisers (``*Transformer2DModel``, ``UNet2DConditionModel`` and
relatives) get:

* ``hidden_states`` / ``sample``: ``[B, in_channels, H, W]`` from ``sample_size``
  (or the ``height``/``width`` given, :mod:`genzip.frontend.export_sizes`);
* ``timestep``: ``[B]`` float in [0, 1000);
* ``encoder_hidden_states``: ``[B, text_len, D]``, D the text-encoder width
  (``caption_channels``, ``encoder_hid_dim``, ``joint_attention_dim`` or
  ``cross_attention_dim``, first one set);
* ``encoder_attention_mask`` when the forward takes one (PixArt, UNets): int64
  ``[B, text_len]`` keep-mask with padding in every sample but the first
  (:func:`prompt_mask`), so the export has the mask input and is verified padded;
* ``pooled_projections`` / ``class_labels`` / ``added_cond_kwargs`` when the
  config asks for them (SD3, DiT class conditioning, PixArt resolution
  conditions, SDXL text-time embeddings);
* ``return_dict=False``; the first output is kept, named ``output``.

Causal LMs get ``input_ids`` ``[B, seq_len]`` and ``use_cache=False``; the
first output (``logits``) is kept. A forward parameter without a default that
none of the rules covers is a GenzipError naming it.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from genzip.errors import GenzipError
from genzip.frontend.torch_io import Call

DIFFUSERS_OUTPUTS = ("output",)
CAUSAL_LM_OUTPUTS = ("logits",)


def _cfg(config, key: str, default=None):
    value = config.get(key, default) if hasattr(config, "get") else getattr(config, key, default)
    return default if value is None else value


def _text_dim(config) -> int | None:
    for key in ("caption_channels", "encoder_hid_dim", "joint_attention_dim", "cross_attention_dim"):
        value = _cfg(config, key)
        if isinstance(value, (list, tuple)):
            if len(set(value)) != 1:
                return None
            value = value[0]
        if value:
            return int(value)
    return None


def _check_required(model: torch.nn.Module, params, given: dict[str, Any]) -> None:
    missing = [
        name
        for name, p in params.items()
        if p.default is inspect.Parameter.empty
        and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        and name not in given
    ]
    if missing:
        raise GenzipError(
            f"don't know how to build example input(s) {', '.join(missing)} for {type(model).__name__}",
            "pass a `package.module:function` reference returning (module, example_inputs) instead",
        )


def diffusers_call(model: torch.nn.Module, *, batch: int, seed: int, text_len: int = 77,
                   height: int | None = None, width: int | None = None) -> Call:
    """Example call of a diffusers denoiser (see the module docstring); ``height``/``width``
    (latent pixels) replace the config's ``sample_size``."""
    config = model.config
    params = inspect.signature(model.forward).parameters
    g = torch.Generator().manual_seed(seed)
    kwargs: dict[str, Any] = {}

    spatial = next((n for n in ("hidden_states", "sample") if n in params), None)
    size, channels = _cfg(config, "sample_size"), _cfg(config, "in_channels")
    if spatial is None or size is None or channels is None:
        raise GenzipError(
            f"{type(model).__name__} is not a latent denoiser with sample_size/in_channels in its config",
            "pass a `package.module:function` reference returning (module, example_inputs) instead",
        )
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    h, w = height or h, width or w
    kwargs[spatial] = torch.randn(batch, channels, h, w, generator=g)
    if "timestep" in params:
        kwargs["timestep"] = torch.randint(0, 1000, (batch,), generator=g).float()
    text_dim = _text_dim(config)
    if "encoder_hidden_states" in params and text_dim:
        kwargs["encoder_hidden_states"] = torch.randn(batch, text_len, text_dim, generator=g)
        if "encoder_attention_mask" in params:
            kwargs["encoder_attention_mask"] = prompt_mask(batch, text_len)
    pooled = _cfg(config, "pooled_projection_dim")
    if "pooled_projections" in params and pooled:
        kwargs["pooled_projections"] = torch.randn(batch, pooled, generator=g)
    classes = _cfg(config, "num_class_embeds") or (
        _cfg(config, "num_embeds_ada_norm") if _cfg(config, "norm_type") == "ada_norm_zero" else None
    )
    if "class_labels" in params and classes:
        kwargs["class_labels"] = torch.randint(0, int(classes), (batch,), generator=g)
    added = _added_cond_kwargs(model, config, batch, (h, w), g)
    if "added_cond_kwargs" in params and added:
        kwargs["added_cond_kwargs"] = added
    if "return_dict" in params:
        kwargs["return_dict"] = False
    _check_required(model, params, kwargs)
    return (), kwargs


def prompt_mask(batch: int, text_len: int) -> torch.Tensor:
    """int64 ``[B, T]`` keep-mask of padded prompts, as a tokenizer returns it: sample 0 keeps
    every token, sample i > 0 pads its last ``i * T // (2B)`` (at least one) tokens, so the
    export is checked against PyTorch with padding in it."""
    mask = torch.ones(batch, text_len, dtype=torch.int64)
    for i in range(1, batch):
        mask[i, text_len - max(1, i * text_len // (2 * batch)):] = 0
    return mask


def _added_cond_kwargs(model, config, batch: int, hw: tuple[int, int], g) -> dict[str, torch.Tensor]:
    if getattr(model, "use_additional_conditions", False):  # PixArt micro-conditions
        pixels = torch.tensor([[hw[0] * 8.0, hw[1] * 8.0]]).repeat(batch, 1)
        return {"resolution": pixels, "aspect_ratio": torch.ones(batch, 1)}
    if _cfg(config, "addition_embed_type") == "text_time":  # SDXL
        time_dim = int(_cfg(config, "addition_time_embed_dim", 0))
        text = int(_cfg(config, "projection_class_embeddings_input_dim", 0)) - 6 * time_dim
        if time_dim and text > 0:
            return {
                "text_embeds": torch.randn(batch, text, generator=g),
                "time_ids": torch.rand(batch, 6, generator=g) * 1024,
            }
    return {}


def causal_lm_call(model: torch.nn.Module, *, batch: int, seed: int, seq_len: int = 32) -> Call:
    """Example call of a transformers causal LM: random ``input_ids``, no KV cache."""
    config = model.config
    vocab = int(_cfg(config, "vocab_size", 0))
    if vocab <= 0:
        raise GenzipError(f"{type(model).__name__} config has no vocab_size", "check the model's config.json")
    seq_len = min(seq_len, int(_cfg(config, "max_position_embeddings", seq_len)))
    g = torch.Generator().manual_seed(seed)
    kwargs: dict[str, Any] = {"input_ids": torch.randint(0, vocab, (batch, seq_len), generator=g)}
    params = inspect.signature(model.forward).parameters
    if "use_cache" in params:
        kwargs["use_cache"] = False
    _check_required(model, params, kwargs)
    return (), kwargs


def diffusers_family(class_name: str) -> str:
    if "Transformer" in class_name:
        return "dit"
    if "UNet" in class_name:
        return "unet"
    return "diffusers"
