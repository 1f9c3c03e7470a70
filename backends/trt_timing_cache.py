"""Where TensorRT's timing cache lives between builds.

A timing cache holds kernel timings measured on one GPU model by one TensorRT version;
reused, it turns a rebuild's minutes of tactic timing into seconds. It is kept in the
user's cache dir (``$GENZIP_CACHE_DIR`` or ``~/.cache/genzip``) under
``tensorrt/timing-<TensorRT version>-<GPU name>-sm<compute capability>.cache``, not in
the artifact, so every build on that GPU and TensorRT version, a ``--force`` rebuild
included, starts from what earlier builds measured, and a cache from another GPU or
version is never read. ``--timing-cache FILE`` replaces the default path.

Invariant: the file is replaced atomically (temp file, then rename), so a build that
dies half-way, or two builds racing, leave a whole cache or the previous one.
"""

from __future__ import annotations

import os
import re

from genzip.jsonfile import cache_root, write_atomic

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def default_path(tensorrt_version: str, gpu_name: str, compute_capability: str | None,
                 cache_dir: str | None = None) -> str:
    """The cache file for this TensorRT version and GPU (names reduced to ``[A-Za-z0-9._-]``)."""
    gpu = _UNSAFE.sub("-", gpu_name).strip("-") or "gpu"
    sm = "sm" + (compute_capability or "unknown").replace(".", "")
    version = _UNSAFE.sub("-", tensorrt_version)
    return os.path.join(cache_root(cache_dir), "tensorrt", f"timing-{version}-{gpu}-{sm}.cache")


def read(path: str) -> bytes:
    """The cache's bytes, or ``b""`` (TensorRT's empty cache) when there is none yet."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return b""


def write(path: str, data: bytes) -> None:
    write_atomic(path, lambda f: f.write(data), binary=True, prefix=".timing-")
