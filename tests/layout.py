"""The installed layout of genzip, built from the repo's layer folders.

pyproject.toml's ``package-dir`` maps each root folder into the one package
``genzip``; an editable install resolves those names with an import hook, which
import-linter and grimp cannot walk. ``stage(dst)`` copies the sources into
``dst/genzip/...`` exactly as a wheel lays them out, so the import graph can be
checked on the code as it is in the working tree.
"""

from __future__ import annotations

import os
import shutil
import sys

import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def package_dir() -> dict[str, str]:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["tool"]["setuptools"]["package-dir"]


def source_modules() -> set[str]:
    """Every module name the layer folders define (packages as their own name)."""
    names = set()
    for package, folder in package_dir().items():
        base = os.path.join(ROOT, folder)
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            if "__init__.py" not in filenames:
                dirnames[:] = []
                continue
            rel = os.path.relpath(dirpath, base)
            prefix = package if rel == "." else ".".join([package, *rel.split(os.sep)])
            for name in filenames:
                if name.endswith(".py"):
                    names.add(prefix if name == "__init__.py" else f"{prefix}.{name[:-3]}")
    return names


def stage(dst: str) -> str:
    """Copy the package into ``dst/genzip`` as installed; return ``dst``."""
    for package, folder in sorted(package_dir().items(), key=lambda kv: kv[0].count(".")):
        target = os.path.join(dst, *package.split("."))
        shutil.copytree(os.path.join(ROOT, folder), target, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dst


if __name__ == "__main__":  # python tests/layout.py DIR: stage for lint-imports by hand
    print(stage(sys.argv[1]))
