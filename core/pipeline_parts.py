"""The modules ``genzip-compile PIPELINE_FOLDER`` exports besides a folder denoiser, with the
example calls their exports trace.

Invariant: each module computes exactly what the diffusers pipeline calls on its
component (the text encoder's last hidden state, the VAE's ``decode``, the masked
PixArt transformer), and its example call has the shapes the pipeline feeds it: the
prompt padded to the pipeline's text length, latents at the denoiser's sample size.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from genzip.errors import GenzipError

# What a text encoder export returns, by how its pipeline reads it (``text_encoder(mode=...)``).
LAST, MASKED, HIDDEN = "last", "masked", "hidden"


def text_encoder(folder: Path, class_name: str, length: int | None, mode: str = LAST,
                 part: str = "text_encoder", tokenizer: str = "tokenizer"):
    """(the text encoder ``folder/part`` as a module, its example call, its config dict).
    ``length``: the prompt length the pipeline pads to (None: the ``tokenizer`` folder's
    ``model_max_length``). ``mode``: ``LAST``, ``input_ids -> last_hidden_state`` (CLIP in SD,
    T5 in SD3); ``MASKED``, the same with the pipeline's padding mask as an ``attention_mask``
    input (T5 in PixArt; the example masks the second half of the prompt); ``HIDDEN``,
    ``input_ids -> (output_0, penultimate)``: the encoder's first output (a projection CLIP's
    pooled ``text_embeds``) and the hidden state before the last layer, what SD3's
    ``encoder(ids, output_hidden_states=True)`` is read for (``[0]``, ``hidden_states[-2]``)."""
    import torch
    import transformers

    cls = getattr(transformers, class_name, None)
    if cls is None:
        raise GenzipError(f"transformers has no text encoder class '{class_name}'",
                          "check model_index.json or upgrade transformers")
    encoder = cls.from_pretrained(folder / part, local_files_only=True, use_safetensors=True,
                                  dtype=torch.float32).eval()
    if length is None:
        length = tokenizer_length(folder, tokenizer) or int(encoder.config.max_position_embeddings)

    class TextEncoder(torch.nn.Module):
        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask=None):
            if mode == HIDDEN:
                out = self.encoder(input_ids, output_hidden_states=True, return_dict=True)
                return out[0], out.hidden_states[-2]
            return self.encoder(input_ids, attention_mask=attention_mask, return_dict=False)[0]

    g = torch.Generator().manual_seed(0)
    call: dict[str, Any] = {"input_ids": torch.randint(0, encoder.config.vocab_size, (1, length), generator=g)}
    if mode == MASKED:
        call["attention_mask"] = (torch.arange(length) < max(1, length // 2)).long()[None]
    return TextEncoder(encoder).eval(), call, encoder.config.to_dict()


def tokenizer_length(folder: Path, tokenizer: str) -> int | None:
    """The ``model_max_length`` of the pipeline's ``tokenizer`` folder (what its pipeline pads
    CLIP prompts to), None when unset."""
    config = json.loads((folder / tokenizer / "tokenizer_config.json").read_text())
    value = config.get("model_max_length")
    return int(value) if value and value < 1e6 else None


def masked_transformer(folder: Path, length: int, batch: int = 2, height: int | None = None,
                       width: int | None = None):
    """(the PixArt transformer with ``encoder_attention_mask`` as an input, its example call at
    ``height`` x ``width`` latents (default: its sample size), its config dict). diffusers'
    PixArt pipelines pass the prompt's padding mask; a graph without it would attend to
    padding, unlike PyTorch."""
    import diffusers
    import torch

    model = diffusers.PixArtTransformer2DModel.from_pretrained(folder / "transformer", local_files_only=True,
                                                               use_safetensors=True,
                                                               torch_dtype=torch.float32).eval()
    config = dict(model.config)

    class MaskedTransformer(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, hidden_states, encoder_hidden_states, timestep, encoder_attention_mask,
                    resolution=None, aspect_ratio=None):
            added = {"resolution": resolution, "aspect_ratio": aspect_ratio}
            # PixArt turns the [B, L] keep-mask into its [B, 1, L] bias; the frontend's export then
            # gives that mask its query axis for ONNX Runtime (frontend.attn_mask_queries).
            return self.model(hidden_states, encoder_hidden_states=encoder_hidden_states, timestep=timestep,
                              encoder_attention_mask=encoder_attention_mask, added_cond_kwargs=added,
                              return_dict=False)[0]

    g = torch.Generator().manual_seed(0)
    size = config["sample_size"]
    call: dict[str, Any] = {
        "hidden_states": torch.randn(batch, config["in_channels"], height or size, width or size, generator=g),
        "encoder_hidden_states": torch.randn(batch, length, config["caption_channels"], generator=g),
        "timestep": torch.randint(0, 1000, (batch,), generator=g).float(),
        "encoder_attention_mask": (torch.arange(length) < max(1, length // 3)).long()[None].repeat(batch, 1),
    }
    if model.use_additional_conditions:  # PixArt micro-conditions (sample_size 128)
        call["resolution"] = torch.tensor([[(height or size) * 8.0, (width or size) * 8.0]]).repeat(batch, 1)
        call["aspect_ratio"] = torch.ones(batch, 1)
    return MaskedTransformer(model).eval(), call, config


def masked_calibration(module, call: dict[str, Any], seed: int):
    """The masked transformer's calibration set, recorded like a preset's or a DiT folder's
    (``frontend.calibration.dit_trajectory``: short DDIM runs of the model's own epsilon from
    seeded latents and captions, 2 trajectories x 4 timesteps), with padded prompt masks
    (``hf_inputs.prompt_mask``) and the micro-conditions, named and typed like the export's
    inputs (``call``'s keys). A zero-argument callable, sampled only when a pass calibrates."""
    from genzip.frontend.calibration import example_sizes, preset_calibration

    like = {name: value.numpy() for name, value in call.items()}
    shapes = example_sizes(like, batch=len(call["hidden_states"]))
    del shapes["seq_len"]
    return preset_calibration(module.model, "dit", like=like, seed=seed, **shapes)


def vae_decoder(folder: Path, denoiser: str, height: int | None = None, width: int | None = None):
    """(the VAE's decode as a module, its example latents, its config dict); the latents are
    the denoiser's: ``height`` x ``width`` when given (``--height``/``--width``), else its
    sample size."""
    import diffusers
    import torch

    vae = diffusers.AutoencoderKL.from_pretrained(str(folder / "vae")).eval()

    class VaeDecoder(torch.nn.Module):
        def __init__(self, vae):
            super().__init__()
            self.vae = vae

        def forward(self, latent):
            return self.vae.decode(latent, return_dict=False)[0]

    size = json.loads((folder / denoiser / "config.json").read_text())["sample_size"]
    g = torch.Generator().manual_seed(0)
    # Batch 1: the decoder's export is not batch-dynamic (torch.export finds a batch constraint in
    # AutoencoderKL.decode), so OrtVaeDecoder decodes one latent per call.
    latents = torch.randn(1, vae.config.latent_channels, height or size, width or size, generator=g)
    return VaeDecoder(vae).eval(), latents, dict(vae.config)


def vae_encoder(folder: Path, denoiser: str, height: int | None = None, width: int | None = None):
    """(the VAE's ``encode`` as a module ``image -> latent_dist.parameters`` (mean and log-variance
    stacked on channels, what ``DiagonalGaussianDistribution`` is built from), its example
    image at the pixel size of the denoiser's sample size)."""
    import diffusers
    import torch

    vae = diffusers.AutoencoderKL.from_pretrained(str(folder / "vae")).eval()

    class VaeEncoder(torch.nn.Module):
        def __init__(self, vae):
            super().__init__()
            self.vae = vae

        def forward(self, image):
            return self.vae.encode(image).latent_dist.parameters

    size = json.loads((folder / denoiser / "config.json").read_text())["sample_size"]
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, vae.config.in_channels, (height or size) * scale, (width or size) * scale, generator=g) * 2 - 1
    return VaeEncoder(vae).eval(), image
