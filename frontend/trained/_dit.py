"""The trained-dit model: config, noise schedule, CFG sampling and held-out denoising loss.

Invariants: the model is a diffusers ``DiTTransformer2DModel`` on 1x32x32 pixel
images in [-1, 1] (patch 2 -> 256 tokens), class labels 0..9 and null class
``NULL_CLASS`` = ``num_embeds_ada_norm`` = 10. Its output has 2 channels in the
learned-sigma layout diffusers' DiT uses (``out_channels = 2 * in_channels``):
channel 0 is the epsilon prediction, the only one trained; channel 1 (variance) is
untrained and must be ignored. Training, sampling and the test share this file's
schedule, so a figure measured here is the figure the test re-checks.
"""

from __future__ import annotations

from pathlib import Path

import torch

CONFIG = dict(
    num_layers=4, num_attention_heads=4, attention_head_dim=24, in_channels=1, out_channels=2,
    patch_size=2, sample_size=32, num_embeds_ada_norm=10, norm_type="ada_norm_zero",
)
NULL_CLASS = 10
# Cosine schedule: better than DiT's linear betas for tiny pixel-space images, where
# linear betas leave the last steps almost noise-free and waste them.
SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="epsilon")
EVAL_TIMESTEPS = (50, 250, 500, 750)


def build(seed: int):
    import diffusers

    torch.manual_seed(seed)
    model = diffusers.DiTTransformer2DModel(**CONFIG)
    # diffusers drops labels inside every block independently while training; the
    # trainer drops them once per sample instead, so the blocks agree on the class.
    for module in model.modules():
        if type(module).__name__ == "LabelEmbedding":
            module.dropout_prob = 0.0
    return model


def ddpm():
    from diffusers import DDPMScheduler

    return DDPMScheduler(**SCHEDULE)


def dpm_solver():
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(**SCHEDULE)


def load(folder: str | Path):
    """The committed trained-dit as an eval-mode FP32 ``DiTTransformer2DModel``."""
    from diffusers import DiTTransformer2DModel

    return DiTTransformer2DModel.from_pretrained(str(folder)).eval()


def epsilon(model, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return model(x, timestep=t, class_labels=labels).sample[:, :1]


@torch.no_grad()
def denoise_loss(model, images: torch.Tensor, labels: torch.Tensor, *, seed: int = 0) -> float:
    """Mean epsilon MSE over ``EVAL_TIMESTEPS`` with seeded noise (same noise for any model)."""
    scheduler = ddpm()
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for step in EVAL_TIMESTEPS:
        noise = torch.randn(images.shape, generator=generator)
        t = torch.full((len(images),), step, dtype=torch.int64)
        noisy = scheduler.add_noise(images, noise, t)
        losses.append(float((epsilon(model, noisy, t, labels) - noise).pow(2).mean()))
    return sum(losses) / len(losses)


@torch.no_grad()
def sample(model, labels: torch.Tensor, *, steps: int = 20, cfg: float = 4.0, seed: int = 0) -> torch.Tensor:
    """Images (N, 1, 32, 32) in [-1, 1] for ``labels`` with DPM-Solver++ and classifier-free guidance."""
    scheduler = dpm_solver()
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((len(labels), 1, 32, 32), generator=generator)
    both = torch.cat([labels, torch.full_like(labels, NULL_CLASS)])
    for t in scheduler.timesteps:
        eps = epsilon(model, torch.cat([x, x]), t.expand(2 * len(labels)), both)
        cond, uncond = eps.chunk(2)
        x = scheduler.step(uncond + cfg * (cond - uncond), t, x).prev_sample
    return x.clamp(-1.0, 1.0)
