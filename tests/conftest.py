"""Shared fixtures: one compiled tiny-pixart artifact per test session, and a private
calibration cache per test."""

from __future__ import annotations

import json
import os

import pytest


def _no_cuda() -> bool:
    import torch

    return not torch.cuda.is_available()


# Triton reads TRITON_INTERPRET when it is first imported, and importing diffusers imports it,
# so the CPU interpreter that tests/test_triton_kernels.py needs is chosen here, before any
# test module is collected (a module importing diffusers at its top otherwise fixes it off).
if "TRITON_INTERPRET" not in os.environ and _no_cuda():
    os.environ["TRITON_INTERPRET"] = "1"


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    """A calibration cache of this test's own, so cached amax from another test (or an
    earlier run) can never stand in for what this test calibrates."""
    monkeypatch.setenv("GENZIP_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def pixart_ort(tmp_path_factory):
    """(folder, manifest) of `genzip-compile tiny-pixart --target ort --passes canonicalize-attn,dce`."""
    from genzip.tools import compile_cli

    folder = str(tmp_path_factory.mktemp("artifacts") / "pixart")
    rc = compile_cli.main(["tiny-pixart", "--target", "ort", "--out", folder,
                           "--passes", "canonicalize-attn,dce", "--quiet"])
    assert rc == 0
    with open(os.path.join(folder, "genzip.json")) as f:
        return folder, json.load(f)
