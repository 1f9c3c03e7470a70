"""scikit-learn's handwritten digits (UCI optdigits test set, 1797 8x8 images, 10 classes).

Invariant: the held-out split is every sample whose index in ``load_digits()`` order
is a multiple of ``HOLDOUT_EVERY``; training never sees those. Images are upsampled
bilinearly to ``SIZE`` x ``SIZE`` and scaled from 0..16 to [-1, 1].
"""

from __future__ import annotations

import torch

SIZE = 32
HOLDOUT_EVERY = 10
SPLIT_RULE = f"held-out = load_digits() samples with index % {HOLDOUT_EVERY} == 0; train = the rest"
SOURCE = "scikit-learn"


def data_record() -> dict[str, str]:
    """The manifest's ``data`` entry of a model trained on these digits (source, its version, loading)."""
    from genzip.frontend.trained._manifest import package_version

    return {"package": SOURCE, "version": package_version(SOURCE), "loader": "sklearn.datasets.load_digits",
            "preprocess": f"0..16 -> [-1, 1], bilinear 8x8 -> {SIZE}x{SIZE}"}


def load(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(images (N, 1, SIZE, SIZE) float32 in [-1, 1], labels (N,) int64)`` of ``split``."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0
    labels = torch.tensor(bunch.target, dtype=torch.int64)
    index = torch.arange(len(labels))
    if split == "heldout":
        keep = index % HOLDOUT_EVERY == 0
    elif split == "train":
        keep = index % HOLDOUT_EVERY != 0
    else:
        raise ValueError(f"split must be 'train' or 'heldout', not {split!r}")
    images = torch.nn.functional.interpolate(images[keep], size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    return images.clamp(-1.0, 1.0), labels[keep]
