"""CLIP-style contrastive training of the caption-conditioned presets' text encoder on digit captions.

Invariants: the text tower is a transformers ``CLIPTextModelWithProjection`` (causal,
CLIP's architecture, final LayerNorm, EOS pooling); the image tower is a small CNN on
the digits train split, discarded after training. The loss is CLIP's symmetric
cross-entropy over the batch's text x image similarities, except that every pair of
the same digit counts as a match (a batch of 64 holds each digit several times, and
calling those negatives would teach the towers to tell copies of one caption apart).
Seeded and one-threaded: the same call on the same package versions returns the same weights.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

BATCH = 64


def _image_tower(dim: int) -> nn.Module:
    return nn.Sequential(
        nn.AvgPool2d(2),
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 4 * 4, dim),
    )


def _loss(text: torch.Tensor, image: torch.Tensor, labels: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    logits = log_scale.exp() * F.normalize(text, dim=-1) @ F.normalize(image, dim=-1).T
    match = (labels[:, None] == labels[None, :]).float()
    target = match / match.sum(1, keepdim=True)  # symmetric: the same matrix row- and column-normalised
    return (-(target * logits.log_softmax(1)).sum(1).mean() - (target * logits.log_softmax(0)).sum(0).mean()) / 2


def train(text_encoder, images: torch.Tensor, labels: torch.Tensor, captions, tokenize, *, steps: int,
          seed: int) -> tuple[object, float]:
    """``text_encoder`` (eval, frozen) after ``steps`` contrastive steps against an image tower on
    ``images``; ``captions(label, index)`` phrases a caption, ``tokenize`` makes its ids. Returns
    (encoder, final loss)."""
    torch.manual_seed(seed)
    image_tower = _image_tower(text_encoder.config.projection_dim)
    log_scale = nn.Parameter(torch.tensor(2.659))  # CLIP's initial temperature, log(1/0.07)
    params = [*text_encoder.parameters(), *image_tower.parameters(), log_scale]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.1)
    generator = torch.Generator().manual_seed(seed + 1)
    text_encoder.train()
    loss = torch.tensor(0.0)
    for _ in range(steps):
        pick = torch.randint(0, len(labels), (BATCH,), generator=generator)
        which = torch.randint(0, 1 << 16, (BATCH,), generator=generator)
        ids = tokenize([captions(int(y), int(i)) for y, i in zip(labels[pick], which)])
        loss = _loss(text_encoder(input_ids=ids).text_embeds, image_tower(images[pick]), labels[pick], log_scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return text_encoder.eval().requires_grad_(False), loss.item()
