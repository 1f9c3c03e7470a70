"""Small CLI promises: --version, and artifact folders created with the user's umask."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

from genzip._version import __version__
from genzip.backends.artifact import staged_folder


def test_both_programs_print_their_version():
    for module, name in (("genzip.tools.genzip_cli", "genzip"), ("genzip.tools.compile_cli", "genzip-compile")):
        result = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0 and result.stdout.strip() == f"{name} {__version__}"


def test_artifact_folders_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with staged_folder(str(tmp_path / "art"), force=False) as tmp:
            open(os.path.join(tmp, "f"), "w").close()
        mode = stat.S_IMODE(os.stat(tmp_path / "art").st_mode)
        assert mode == 0o755  # not mkdtemp's 0700
        os.umask(0o077)
        with staged_folder(str(tmp_path / "private"), force=False):
            pass
        assert stat.S_IMODE(os.stat(tmp_path / "private").st_mode) == 0o700
    finally:
        os.umask(old)
