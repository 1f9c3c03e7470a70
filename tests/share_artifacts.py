"""Compiled tiny-pixart artifacts for the share-attn / runtime / plan tests, built once per session."""

from __future__ import annotations

import os

SHARE_SPEC = "canonicalize-attn,share-attn{tokens=32}"
_BUILT: dict[str, str] = {}


def compiled(tmp_path_factory, spec: str = SHARE_SPEC) -> str:
    """Folder of `genzip-compile tiny-pixart --target ort --passes SPEC` (seed 0), cached by spec."""
    from genzip.tools import compile_cli

    if spec not in _BUILT:
        folder = str(tmp_path_factory.mktemp("share") / "pixart")
        rc = compile_cli.main(["tiny-pixart", "--target", "ort", "--out", folder, "--passes", spec, "--quiet"])
        assert rc == 0 and os.path.isfile(os.path.join(folder, "genzip.json"))
        _BUILT[spec] = folder
    return _BUILT[spec]


def compiled_preset(tmp_path_factory, preset: str, spec: str) -> str:
    """Folder of `genzip-compile PRESET --target ort --passes SPEC` (seed 0), cached by (preset, spec)."""
    from genzip.tools import compile_cli

    key = f"{preset}|{spec}"
    if key not in _BUILT:
        folder = str(tmp_path_factory.mktemp("share") / preset)
        rc = compile_cli.main([preset, "--target", "ort", "--out", folder, "--passes", spec, "--quiet"])
        assert rc == 0 and os.path.isfile(os.path.join(folder, "genzip.json"))
        _BUILT[key] = folder
    return _BUILT[key]
