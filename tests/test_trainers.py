"""The trained presets' training code, a few steps at a time: deterministic and really learning.

The full runs take 10-40 CPU minutes and are not part of the suite; these check that the
trainers' pieces (CLIP-style text encoder, captioned and class-conditional denoisers,
their shared optimizer/EMA step) run, move the weights and repeat exactly for a seed.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("sklearn", reason="the digits ship with scikit-learn")


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.fixture(scope="module")
def digits():
    from genzip.frontend.trained import _digits

    x, y = _digits.load("train")
    return x[:128], y[:128]


def test_clip_training_is_seeded_and_moves_the_encoder(digits):
    from genzip.frontend.trained import _captions, _clip

    runs = [_clip.train(_captions.build_text_encoder(7), *digits, _captions.caption, _captions.tokenize,
                        steps=3, seed=7) for _ in range(2)]
    (a, loss_a), (b, loss_b) = runs
    assert _same(a, b) and loss_a == loss_b > 0
    assert not _same(a, _captions.build_text_encoder(7))
    assert not any(p.requires_grad for p in a.parameters())  # frozen for the denoiser


@pytest.mark.parametrize("preset", ["trained-sd3", "trained-pixart"])
def test_captioned_denoiser_steps_are_seeded(digits, preset):
    from genzip.frontend.trained import _captioned, _captions, train_captioned

    table = train_captioned.caption_table(_captions.build_text_encoder(7))
    assert table[0].shape == (10, len(_captions.TEMPLATES) + 1, _captions.TEXT_LEN, _captions.TEXT_DIM)
    runs = [train_captioned.train(preset, *digits, table, steps=2, batch=4, seed=0) for _ in range(2)]
    (a, loss_a), (b, loss_b) = runs
    assert _same(a, b) and loss_a == loss_b
    assert not _same(a, _captioned.build(preset, 0))  # the EMA copy moved


def test_class_conditional_denoiser_steps_are_seeded(digits):
    from genzip.frontend.trained import _dit, train_dit

    (a, loss_a), (b, loss_b) = (train_dit.train(*digits, steps=2, batch=4, seed=0) for _ in range(2))
    assert _same(a, b) and loss_a == loss_b
    assert not _same(a, _dit.build(0))


def test_trainers_share_their_command_line():
    from pathlib import Path

    from genzip.frontend.trained import _schedule

    args = _schedule.trainer_parser("Train it.\n\nMore.", steps=600).parse_args(["--out", "w"])
    assert (args.out, args.steps, args.batch, args.seed) == (Path("w"), 600, 32, 0)
