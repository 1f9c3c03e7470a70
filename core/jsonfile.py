"""Reading JSON files users hand to genzip (plans, manifests) and genzip's own caches.

Invariant: ``read_json`` returns the parsed document or raises one ``GenzipError``
line that names the file, what was wrong (missing, unreadable, or invalid JSON with
line and column) and the caller's fix; ``read_cache`` never raises for a bad cache
file, it reports a miss. JSON only: nothing here unpickles or evaluates.
"""

from __future__ import annotations

import json
import os
from typing import Any

from genzip.errors import GenzipError


def read_json(path: str, what: str, fix: str) -> Any:
    """Parse ``path``; ``what`` names the file for the user ("plan file", "manifest")."""
    if not os.path.isfile(path):
        raise GenzipError(f"{what} {path} does not exist", fix)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as e:
        raise GenzipError(f"cannot read {what} {path} ({e.strerror})", fix) from None
    except json.JSONDecodeError as e:
        raise GenzipError(f"{what} {path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})",
                          fix) from None
    except UnicodeDecodeError:
        raise GenzipError(f"{what} {path} is not valid JSON (not UTF-8 text)", fix) from None


def cache_root(cache_dir: str | None = None) -> str:
    """``cache_dir``, else ``$GENZIP_CACHE_DIR``, else ``~/.cache/genzip``."""
    return cache_dir or os.environ.get("GENZIP_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "genzip")


def read_cache(path: str, keys: dict[str, Any]) -> dict[str, Any] | None:
    """A cache entry whose ``keys`` all match, else None (missing, corrupt or stale)."""
    try:
        with open(path, encoding="utf-8") as f:
            body = json.load(f)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(body, dict) or any(body.get(k) != v for k, v in keys.items()):
        return None
    return body
