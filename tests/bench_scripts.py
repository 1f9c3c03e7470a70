"""Run the scripts of ``benchmarks/`` (outside the package) the way a user does:
``python benchmarks/bench_X.py ARGS`` from the repo root, in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = os.path.join(ROOT, "benchmarks")


def command(script: str, *args) -> list[str]:
    """``python benchmarks/SCRIPT ARGS`` as an argv."""
    return [sys.executable, os.path.join(BENCHMARKS, script), *map(str, args)]


def start(argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``argv`` in the repo root, stdout and stderr captured as text; ``env`` adds variables."""
    return subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 900) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of a started process."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"{proc.args} ran past {timeout} s; stderr tail:\n{err[-2000:]}") from None
    return proc.returncode, out, err


def run(script: str, *args, env: dict[str, str] | None = None, timeout: float = 900) -> tuple[int, str, str]:
    """Run ``python benchmarks/SCRIPT ARGS`` to completion: (exit code, stdout, stderr)."""
    return finish(start(command(script, *args), env), timeout)
