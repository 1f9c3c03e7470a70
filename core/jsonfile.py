"""Reading JSON files users hand to genzip (plans, manifests), genzip's own caches, and
writing any single file atomically.

Invariant: ``read_json`` returns the parsed document or raises one ``GenzipError``
line that names the file, what was wrong (missing, unreadable, or invalid JSON with
line and column) and the caller's fix; ``read_cache`` never raises for a bad cache
file, it reports a miss. JSON only: nothing here unpickles or evaluates.
``write_atomic`` leaves ``path`` either as it was or whole: it writes a temporary
sibling and renames it into place, and removes the temporary file if writing fails.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from typing import IO, Any

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


def write_atomic(path: str, write: Callable[[IO], None], *, binary: bool = False, prefix: str = ".genzip-",
                 suffix: str = "") -> None:
    """Create ``path``'s folder, call ``write(file)`` on a temporary sibling (text in UTF-8,
    or ``binary``), then rename it over ``path`` (see the module invariant)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
    try:
        with os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
