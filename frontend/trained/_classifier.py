"""A tiny CNN that tells which digit a 32x32 image in [-1, 1] shows.

It is the judge of the trained DiT's samples: trained on the digits train split
only (with +-2 pixel shifts so that slightly off-centre samples are not punished),
its accuracy on the held-out split is recorded next to the sample accuracy.
"""

from __future__ import annotations

import torch
from torch import nn

WEIGHTS = "classifier.safetensors"


class DigitClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.AvgPool2d(2),
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 4 * 4, 10),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def load(path) -> DigitClassifier:
    """The classifier saved at ``path`` (safetensors), in eval mode."""
    from safetensors.torch import load_file

    model = DigitClassifier()
    model.load_state_dict(load_file(str(path)))
    return model.eval()


def _shift(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    dy, dx = (int(v) for v in torch.randint(-2, 3, (2,), generator=generator))
    # Pad with the background value (-1) so shifting does not invent ink.
    padded = nn.functional.pad(images, (2, 2, 2, 2), value=-1.0)
    size = images.shape[-1]
    return padded[..., 2 + dy : 2 + dy + size, 2 + dx : 2 + dx + size]


def train(images: torch.Tensor, labels: torch.Tensor, *, seed: int, epochs: int = 30) -> DigitClassifier:
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = DigitClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(epochs):
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(order), 64):
            batch = order[start : start + 64]
            loss = nn.functional.cross_entropy(model(_shift(images[batch], generator)), labels[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: DigitClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    return float((model(images).argmax(-1) == labels).float().mean())
