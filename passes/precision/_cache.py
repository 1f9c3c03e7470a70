"""Sensitivity results on disk: JSON, keyed by model hash, calibration hash and the
measurement settings (candidate formats, metrics, samples, block size), so a
re-run of the allocation with another budget or objective never re-measures.

Path: ``cache=DIR`` (default ``$GENZIP_CACHE_DIR`` or ``~/.cache/genzip``)
``/sensitivity/<model>-<data>-<settings>.json``. A file whose recorded keys do not
match (a hash-prefix collision, a hand edit) is treated as a miss. Writes are atomic
(``quant_calib_data.write_cache``).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from genzip import jsonfile
from genzip.passes.quant._calib_data import write_cache

__all__ = ["settings_hash", "cache_file", "read", "write_cache"]


def settings_hash(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def cache_file(cache_dir: str | None, mhash: str, dhash: str, shash: str) -> str:
    return os.path.join(jsonfile.cache_root(cache_dir), "sensitivity", f"{mhash[:20]}-{dhash[:20]}-{shash[:16]}.json")


def read(path: str, mhash: str, dhash: str, shash: str) -> dict[str, Any] | None:
    return jsonfile.read_cache(path, {"model": mhash, "data": dhash, "settings": shash})
