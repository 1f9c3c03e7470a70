"""The artifact folder: model files, ``genzip.json`` manifest and ``report.md``.

Invariant: an artifact folder is either absent or complete. It is built in a
temporary sibling folder and renamed into place; an existing non-empty folder is
replaced only with ``force``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

from genzip import jsonfile
from genzip.errors import GenzipError
from genzip.hashing import sha256_file  # noqa: F401 - part of this module's API (manifests' hashes)

MANIFEST = "genzip.json"
REPORT = "report.md"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_out_dir(out_dir: str, force: bool) -> None:
    """Refuse a non-empty folder without ``force`` and an unwritable parent, before any work."""
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir):
        if not os.path.isdir(out_dir):
            raise GenzipError(f"--out {out_dir} exists and is not a folder", "choose another --out path")
        if os.listdir(out_dir) and not force:
            raise GenzipError(f"--out {out_dir} is not empty", "pass --force to replace it or choose another --out")
    parent = os.path.dirname(out_dir)
    probe = parent
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe) or not os.access(probe, os.W_OK | os.X_OK):
        raise GenzipError(f"cannot write to {parent}", "choose an --out folder you can write to")


@contextlib.contextmanager
def staged_folder(out_dir: str, force: bool) -> Iterator[str]:
    """Yield a temp folder; on success it atomically becomes ``out_dir``."""
    out_dir = os.path.abspath(out_dir)
    check_out_dir(out_dir, force)
    parent = os.path.dirname(out_dir)
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
        # mkdtemp makes the folder 0700; the artifact gets what mkdir would give it.
        os.chmod(tmp, 0o777 & ~_umask())
    except OSError as e:
        raise GenzipError(f"cannot write to {parent}: {e.strerror}", "choose an --out folder you can write to") from None
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if os.path.exists(out_dir):
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.old-", dir=parent)
        os.replace(out_dir, os.path.join(old, "x"))
    os.replace(tmp, out_dir)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def hash_files(folder: str, names: list[str]) -> dict[str, str]:
    return {name: sha256_file(os.path.join(folder, name)) for name in sorted(names)}


def write_json(path: str, data: dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=False)
        f.write("\n")


def read_manifest(artifact: str) -> dict[str, Any]:
    if not os.path.exists(artifact):
        raise GenzipError(f"artifact {artifact} does not exist", "pass a folder written by genzip-compile")
    path = os.path.join(artifact, MANIFEST)
    if not os.path.isfile(path):
        raise GenzipError(f"{artifact} has no {MANIFEST}", "pass a folder written by genzip-compile")
    manifest = jsonfile.read_json(path, "manifest", "recompile the artifact")
    if isinstance(manifest, dict) and manifest.get("kind") == "pipeline":  # genzip-compile PIPELINE_FOLDER
        parts = manifest.get("components") or {"transformer": "transformer"}
        denoiser = next(iter(parts.values()))  # the denoiser comes first
        raise GenzipError(f"{artifact} is a whole-pipeline artifact, not a single model",
                          "open it with genzip.load_pipeline or genzip sample ARTIFACT --labels ... / --prompt ..., "
                          f"or pass one of its components ({os.path.join(artifact, denoiser)})")
    if not isinstance(manifest, dict) or "files" not in manifest or "model" not in manifest:
        raise GenzipError(f"{path} is not a genzip manifest", "recompile the artifact")
    return manifest
