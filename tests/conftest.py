"""Shared fixtures: one compiled tiny-pixart artifact per test session."""

from __future__ import annotations

import json
import os

import pytest


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
