"""The wheel holds every module of the tree and each imports from a fresh venv.

Built the way pip builds it (not editable), installed without dependencies into a
new venv that borrows this environment's third-party packages through PYTHONPATH
(whose .pth files, the editable genzip hook among them, are not processed there).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile

import pytest
from layout import ROOT, source_modules

_IMPORT_ALL = textwrap.dedent('''
    import importlib, json, os, pkgutil, sys
    import genzip
    base = os.path.dirname(genzip.__file__)
    assert base.startswith(sys.prefix), (base, sys.prefix)  # the wheel's copy, not the repo
    failed = {}
    names = ["genzip"] + [m.name for m in pkgutil.walk_packages([base], "genzip.")]
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as e:
            failed[name] = repr(e)
    print(json.dumps({"modules": names, "failed": failed}))
''')


def _clean_copy(dst) -> str:
    """The files git would hand a fresh clone (tracked or not ignored): a stale build/
    folder in the checkout must not leak old modules into the wheel."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                            check=True, capture_output=True, timeout=60).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = os.path.join(ROOT, rel)
        if os.path.isfile(src):
            os.makedirs(os.path.dirname(os.path.join(dst, rel)), exist_ok=True)
            shutil.copy2(src, os.path.join(dst, rel))
    return str(dst)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("wheel")
    src = _clean_copy(tmp_path_factory.mktemp("src"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    src], check=True, capture_output=True, timeout=300)
    (path,) = glob.glob(str(out / "genzip-*.whl"))
    return path


def _wheel_modules(path: str) -> set[str]:
    names = set()
    with zipfile.ZipFile(path) as z:
        for name in z.namelist():
            if name.startswith("genzip/") and name.endswith(".py"):
                mod = name[:-3].replace("/", ".")
                names.add(mod[: -len(".__init__")] if mod.endswith(".__init__") else mod)
    return names


def test_the_wheel_holds_every_module_and_nothing_else(wheel):
    with zipfile.ZipFile(wheel) as z:
        tops = {n.split("/")[0] for n in z.namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"genzip"}  # nothing generic in site-packages
    assert _wheel_modules(wheel) == source_modules()


def test_every_module_imports_from_a_fresh_venv(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = str(venv / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel], check=True,
                   capture_output=True, timeout=300)
    env = dict(os.environ, PYTHONPATH=sysconfig.get_paths()["purelib"])
    result = subprocess.run([python, "-c", _IMPORT_ALL], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    body = json.loads(result.stdout.strip().splitlines()[-1])
    assert body["failed"] == {}
    assert set(body["modules"]) == source_modules()
