"""Manifest of a trained-weights folder: provenance plus the sha256 of each weight file.

Invariant: ``manifest.json`` lists in ``sha256`` exactly the ``*.safetensors`` files
of its folder, hashed after they were written, so a reader can tell the committed
weights are the ones the recorded figures were measured on.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from typing import Any

from genzip.hashing import sha256_file

MANIFEST = "manifest.json"
REQUIRED = ("preset", "data", "split", "steps", "final_loss", "quality", "sha256", "train_seconds")


def weight_hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*.safetensors"))}


def package_version(name: str) -> str:
    return metadata.version(name)


def write_manifest(folder: Path, fields: dict[str, Any]) -> dict[str, Any]:
    """Write ``fields`` plus the weight hashes of ``folder``; returns what was written."""
    manifest = dict(fields, sha256=weight_hashes(folder))
    missing = [key for key in REQUIRED if key not in manifest]
    if missing:
        raise ValueError(f"manifest lacks {missing}")
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def read_manifest(folder: Path) -> dict[str, Any]:
    return json.loads((Path(folder) / MANIFEST).read_text())
