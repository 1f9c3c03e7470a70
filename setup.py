"""Package discovery for genzip's root layout.

``[tool.setuptools] package-dir`` in pyproject.toml maps each layer folder at the
repo root into the one import package ``genzip``. setuptools' own ``find``
directive cannot prefix the names it finds, so this file walks those folders and
lists every subpackage (a folder with ``__init__.py``): a new subpackage is in the
wheel without anyone editing a list (tests/test_wheel.py checks the built wheel).
"""

import os
import sys

from setuptools import setup

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - build-system requires tomli there
    import tomli as tomllib

HERE = os.path.dirname(os.path.abspath(__file__))


def discover(package_dir: dict[str, str]) -> list[str]:
    found = set()
    for package, folder in package_dir.items():
        for dirpath, dirnames, filenames in os.walk(os.path.join(HERE, folder)):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.startswith("."))
            if "__init__.py" not in filenames:
                dirnames[:] = []  # not a package: nothing below it is either
                continue
            rel = os.path.relpath(dirpath, os.path.join(HERE, folder))
            found.add(package if rel == "." else ".".join([package, *rel.split(os.sep)]))
    return sorted(found)


with open(os.path.join(HERE, "pyproject.toml"), "rb") as f:
    PACKAGE_DIR = tomllib.load(f)["tool"]["setuptools"]["package-dir"]

setup(packages=discover(PACKAGE_DIR))
