"""Built-in presets: architectures with seeded random weights (no files needed), and
trained reference models whose weights ship in ``frontend/trained/weights``.

``PRESETS`` maps each name to a one-line description (for the CLI). The DiT
presets are diffusers ``PixArtTransformer2DModel`` (text-conditioned) except
``tiny-dit``, a class-conditional ``DiTTransformer2DModel`` (``class_labels``,
null class ``num_embeds_ada_norm``); ``tiny-llama`` is a
transformers ``LlamaForCausalLM`` with grouped-query attention. DiTs default to
batch 2 (a classifier-free-guidance pair), the LLM to batch 1.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any

from genzip.errors import GenzipError, did_you_mean


@dataclasses.dataclass(frozen=True)
class _Preset:
    description: str
    family: str  # "dit" | "llm"
    batch: int
    config: dict[str, Any]
    text_len: int = 0  # caption tokens (DiT)
    seq_len: int = 0  # tokens (LLM)
    module: str = "PixArtTransformer2DModel"  # diffusers class of a DiT preset
    weights: str | None = None  # trained presets: folder under frontend/trained/weights


def _trained_config(name: str) -> dict[str, Any]:
    """The committed config.json of a trained preset (runtime reads e.g. its null class)."""
    import json
    from pathlib import Path

    path = Path(__file__).parent / "trained" / "weights" / name / "config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _pixart(layers: int, heads: int, head_dim: int, patch: int, size: int, caption: int) -> dict[str, Any]:
    return dict(
        num_layers=layers,
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        in_channels=4,
        out_channels=8,
        patch_size=patch,
        sample_size=size,
        cross_attention_dim=heads * head_dim,
        caption_channels=caption,
        norm_type="ada_norm_single",
        use_additional_conditions=False,
    )


_SPECS: dict[str, _Preset] = {
    "tiny-pixart": _Preset(
        "PixArt DiT, 2 layers, 4x16 heads, 256 image + 8 caption tokens (tests)",
        "dit", 2, _pixart(2, 4, 16, 1, 16, 32), text_len=8,
    ),
    "tiny-dit": _Preset(
        "class-conditional DiT (ImageNet-style labels), 2 layers, 4x16 heads, patch 2, 64 image tokens (tests)",
        "dit", 2,
        dict(num_layers=2, num_attention_heads=4, attention_head_dim=16, in_channels=4, out_channels=8,
             patch_size=2, sample_size=16, num_embeds_ada_norm=1000, norm_type="ada_norm_zero"),
        module="DiTTransformer2DModel",
    ),
    "tiny-llama": _Preset(
        "Llama causal LM, 2 layers, hidden 64, 4 heads / 2 KV heads, vocab 256, 32 tokens (tests)",
        "llm", 1,
        dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128),
        seq_len=32,
    ),
    "bench-dit": _Preset(
        "PixArt DiT, 12 layers, hidden 384 (6x64), patch 2, latent 4x64x64 -> 1024 tokens, 32 caption tokens",
        "dit", 2, _pixart(12, 6, 64, 2, 64, 384), text_len=32,
    ),
    "bench-dit-4k": _Preset(
        "PixArt DiT, 12 layers, hidden 384 (6x64), patch 2, latent 4x128x128 -> 4096 tokens, 32 caption tokens",
        "dit", 2, _pixart(12, 6, 64, 2, 128, 384), text_len=32,
    ),
    "trained-dit": _Preset(
        "class-conditional DiT trained on scikit-learn's digits (32x32 pixels, 256 tokens, 4 layers, 10 classes)",
        "dit", 2, _trained_config("trained-dit"), module="DiTTransformer2DModel", weights="trained-dit",
    ),
    "trained-sd3": _Preset(
        "SD3 MMDiT trained on scikit-learn's digits with captions through its own CLIP-style text encoder "
        "(tokens + pooled state; 32x32 pixels, 256 image + 8 caption tokens, 4 layers)",
        "dit", 2, _trained_config("trained-sd3"), text_len=8, module="SD3Transformer2DModel", weights="trained-sd3",
    ),
    "trained-llama": _Preset(
        "Llama (GQA 4/2, hidden 192, 4 layers) trained on the King James Bible, own BPE-1024 tokenizer, 128 tokens",
        "llm", 1, _trained_config("trained-llama"), seq_len=128, weights="trained-llama",
    ),
    "trained-moe": _Preset(
        "Mixtral (4 experts, top-2, 4 layers) trained on the King James Bible like trained-llama, 128 tokens",
        "llm", 1, _trained_config("trained-moe"), seq_len=128, weights="trained-moe",
    ),
}


def _described(spec: _Preset) -> str:
    """The CLI line of a preset; a trained one whose weights are not committed says so."""
    if spec.weights is not None and not spec.config:  # _trained_config found no committed config.json
        return f"{spec.description} [weights not committed: unusable]"
    return spec.description


PRESETS: types.MappingProxyType[str, str] = types.MappingProxyType(
    {name: _described(spec) for name, spec in _SPECS.items()}
)


def get_preset(name: str) -> _Preset:
    try:
        return _SPECS[name]
    except KeyError:
        hint = did_you_mean(name, _SPECS) or f" (did you mean one of: {', '.join(_SPECS)}?)"
        raise GenzipError(
            f"unknown model reference '{name}'{hint}",
            "use a preset, an existing .onnx file or local Hugging Face folder, or package.module:function",
        ) from None


def _build_module(spec: _Preset) -> Any:
    if spec.weights is not None:
        return _load_trained(spec)
    if spec.family == "dit":
        import diffusers

        return getattr(diffusers, spec.module)(**spec.config)
    import transformers

    config = transformers.LlamaConfig(**spec.config, attn_implementation="sdpa")
    return transformers.LlamaForCausalLM(config)


def _load_trained(spec: _Preset) -> Any:
    """The committed weights (``seed`` does not change them); MoE experts in their exportable form."""
    from genzip.frontend.hf_folder import exportable_experts
    from genzip.frontend.trained import WEIGHTS

    folder = WEIGHTS / spec.weights
    if not (folder / "config.json").is_file():  # a registered preset whose weights are not committed (yet)
        raise GenzipError(
            f"trained preset '{spec.weights}' has no committed weights in {folder}",
            "train them with its script in genzip.frontend.trained (README: Presets) or use another preset",
        )
    if spec.family == "dit" and spec.text_len:  # caption-conditioned
        from genzip.frontend.trained import _captioned

        return _captioned.load(spec.weights, folder)
    if spec.family == "dit":
        from genzip.frontend.trained import _dit

        return _dit.load(folder)
    from genzip.frontend.trained import _lm

    module, _tokenizer = _lm.load(folder)
    exportable_experts(module)
    return module


def load_preset(name: str, *, seed: int, batch: int | None, user=None, sizes=None, axes=None):
    """Build, export and verify preset ``name``; ``sizes`` (:class:`ExportSizes`) replace the
    preset's text length, latent size or sequence length; ``axes`` (``DynamicAxes``) which of
    them stay dynamic."""
    import torch

    from genzip.frontend import export_sizes, hf_inputs
    from genzip.frontend.from_torch import source_from_torch

    spec = get_preset(name)
    batch = batch or spec.batch
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = _build_module(spec).eval()
    text_len, seq_len = spec.text_len, spec.seq_len
    captions = _caption_embedder(spec)
    if spec.family == "dit":
        sizes = export_sizes.check_diffusers(sizes, module, has_text=bool(spec.text_len))
        text_len = sizes.text_len or text_len
        call = hf_inputs.diffusers_call(module, batch=batch, seed=seed, text_len=text_len,
                                        height=sizes.height, width=sizes.width)
        if captions is not None:  # a caption-conditioned trained preset: real caption encodings
            call[1].update(captions.forward_inputs(call[1], batch, seed))
        outputs = hf_inputs.DIFFUSERS_OUTPUTS
    else:
        sizes = export_sizes.check_causal_lm(sizes, module)
        seq_len = sizes.seq_len or seq_len
        call = hf_inputs.causal_lm_call(module, batch=batch, seed=seed, seq_len=seq_len)
        outputs = hf_inputs.CAUSAL_LM_OUTPUTS
    info = {"family": spec.family, "preset": name, "class": type(module).__name__, "batch": batch, "seed": seed}
    if sizes.record():
        info["export_sizes"] = sizes.record()
    if spec.weights is not None:
        info["weights"] = spec.weights
    source = source_from_torch(module, call, source=name, kind="preset", output_names=outputs, info=info, user=user,
                               axes=axes)
    # Seeded calibration inputs that are not the example (fidelity) inputs; sampled lazily
    # (unless the user gave a calibration set). Shaped like the example inputs, which may be the user's.
    from genzip.frontend.calibration import example_sizes, preset_calibration
    from genzip.frontend.trained import WEIGHTS

    shapes = example_sizes(source.example_inputs, batch=batch, text_len=text_len, seq_len=seq_len)
    source.info.setdefault("calibration", preset_calibration(
        module, spec.family, like=source.example_inputs, seed=seed, **shapes,
        weights=WEIGHTS / spec.weights if spec.weights else None, captions=captions,
    ))
    return source


def _caption_embedder(spec: _Preset):
    """``(batch, seed) -> (token states, pooled)`` of a trained preset with a committed text
    encoder (seeded captions through it, CFG layout), else None."""
    if spec.weights is None or spec.family != "dit" or not spec.text_len:
        return None
    from genzip.frontend.trained import WEIGHTS, _captions

    return _captions.CaptionEmbedder(WEIGHTS / spec.weights)
