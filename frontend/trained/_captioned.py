"""The caption-conditioned trained denoisers: ``trained-pixart`` and ``trained-sd3``.

Invariants:

* both are diffusers transformers on 1x32x32 pixel images in [-1, 1] (patch 2 -> 256
  tokens, 4 layers, 4 heads x 24) with trained-dit's noise schedule, predicting epsilon;
* they read the captions of ``_captions`` through its frozen CLIP-style encoder:
  ``PixArtTransformer2DModel`` only through cross-attention on the token states (its
  output has 2 channels in the learned-sigma layout, channel 0 = epsilon, the only one
  trained); ``SD3Transformer2DModel`` through joint attention on the token states
  (``context_embedder``) and its adaLN on the pooled state (``pooled_projections``), as
  SD3 reads CLIP;
* the unconditional caption is the empty one, trained by dropping captions, so CFG's
  negative is ``_captions.encode(encoder, [""])``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from genzip.frontend.trained import _captions, _dit

_COMMON = dict(num_layers=4, num_attention_heads=4, attention_head_dim=24, in_channels=1, patch_size=2,
               sample_size=32)
MODELS = {
    "trained-pixart": ("PixArtTransformer2DModel", dict(
        _COMMON, out_channels=2, cross_attention_dim=96, caption_channels=_captions.TEXT_DIM,
        norm_type="ada_norm_single", use_additional_conditions=False)),
    "trained-sd3": ("SD3Transformer2DModel", dict(
        _COMMON, out_channels=1, joint_attention_dim=_captions.TEXT_DIM, caption_projection_dim=96,
        pooled_projection_dim=_captions.TEXT_DIM, pos_embed_max_size=16)),
}
SCHEDULE = _dit.SCHEDULE
EVAL_TIMESTEPS = _dit.EVAL_TIMESTEPS


def build(preset: str, seed: int):
    import diffusers

    cls, config = MODELS[preset]
    torch.manual_seed(seed)
    return getattr(diffusers, cls)(**config)


def load(preset: str, folder: str | Path):
    """The committed denoiser of ``preset`` as an eval-mode FP32 diffusers model."""
    import diffusers

    return getattr(diffusers, MODELS[preset][0]).from_pretrained(str(folder)).eval()


def epsilon(model, x: torch.Tensor, t: torch.Tensor, states: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    if type(model).__name__ == "SD3Transformer2DModel":
        return model(x, encoder_hidden_states=states, pooled_projections=pooled, timestep=t).sample
    cond = {"resolution": None, "aspect_ratio": None}
    return model(x, encoder_hidden_states=states, timestep=t, added_cond_kwargs=cond).sample[:, :1]


@torch.no_grad()
def denoise_loss(model, images: torch.Tensor, text: tuple[torch.Tensor, torch.Tensor], *, seed: int = 0) -> float:
    """Mean epsilon MSE over ``EVAL_TIMESTEPS`` with seeded noise (same noise for any model)."""
    scheduler = _dit.ddpm()
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for step in EVAL_TIMESTEPS:
        noise = torch.randn(images.shape, generator=generator)
        t = torch.full((len(images),), step, dtype=torch.int64)
        losses.append(float((epsilon(model, scheduler.add_noise(images, noise, t), t, *text) - noise).pow(2).mean()))
    return sum(losses) / len(losses)


@torch.no_grad()
def sample(model, text: tuple[torch.Tensor, torch.Tensor], negative: tuple[torch.Tensor, torch.Tensor], *,
           steps: int = 20, cfg: float = 4.0, seed: int = 0) -> torch.Tensor:
    """Images (N, 1, 32, 32) in [-1, 1] for caption encodings ``text`` (negatives ``negative``, one row)."""
    scheduler = _dit.dpm_solver()
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(seed)
    n = len(text[0])
    x = torch.randn((n, 1, 32, 32), generator=generator)
    both = [torch.cat([c, u.expand_as(c)]) for c, u in zip(text, negative)]
    for t in scheduler.timesteps:
        eps = epsilon(model, torch.cat([x, x]), t.expand(2 * n), *both)
        cond, uncond = eps.chunk(2)
        x = scheduler.step(uncond + cfg * (cond - uncond), t, x).prev_sample
    return x.clamp(-1.0, 1.0)
