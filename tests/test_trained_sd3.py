"""trained-sd3 compiled with MixDQ's BOS on its text path, evaluated and sampled as a user would.

One compile (``quantize=context_embedder bos=true``, w8a8): the text path's token 0 becomes a
precomputed constant, ``genzip eval`` feeds captions as token states plus SD3's pooled states,
and ``genzip sample`` (which makes no pooled state) refuses in one line.
"""

from __future__ import annotations

import json
import os

import pytest

from tests.share_artifacts import compiled_preset

BOS_SPEC = "annotate-precision{scheme=w8a8 quantize=context_embedder bos=true},calibrate,quant{scheme=w8a8}"


@pytest.fixture(scope="module")
def bos_artifact(tmp_path_factory):
    pytest.importorskip("sklearn", reason="the held-out digits ship with scikit-learn")
    return compiled_preset(tmp_path_factory, "trained-sd3", BOS_SPEC)


def test_bos_makes_the_text_paths_token_0_a_constant(bos_artifact):
    with open(os.path.join(bos_artifact, "genzip.json")) as f:
        manifest = json.load(f)
    stats = {r["pass"].split("{")[0]: r["stats"] for r in manifest["pass_stats"]}
    assert stats["annotate-precision"]["bos"] == 1 and stats["calibrate"]["bos_tensors"] == 1
    assert stats["quant"]["bos"] == 1
    assert manifest["fidelity"]["cosine"] > 0.99  # vs PyTorch on the preset's caption example inputs


def test_eval_scores_captioned_samples(bos_artifact, capsys):
    from genzip.tools import genzip_cli

    rc = genzip_cli.main(["eval", bos_artifact, "--samples", "2", "--steps", "2", "--json", "--quiet",
                          "--threads", "1"])
    assert rc == 0
    figures = json.loads(capsys.readouterr().out)
    figures = figures.get("figures", figures)
    assert figures["accuracy"] is not None and figures["frechet_distance"] is not None
    assert "captions" in figures["conditions"]


def test_sample_refuses_an_sd3_artifact_in_one_line(bos_artifact, tmp_path, capsys):
    from genzip.tools import genzip_cli

    rc = genzip_cli.main(["sample", bos_artifact, "--out", str(tmp_path / "x.png"), "--steps", "2"])
    err = capsys.readouterr().err
    assert rc == 2 and "pooled_projections" in err and len(err.strip().splitlines()) == 1
