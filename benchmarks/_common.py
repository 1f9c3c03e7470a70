"""What every benchmark script shares: genzip's CLI flags and error boundary.

The scripts in ``benchmarks/`` are run as ``python benchmarks/bench_X.py ARGS`` (this
folder is then first on ``sys.path``, so ``import _common`` finds this file); they use
genzip as a library and are not part of the installed package. Like the ``genzip``
commands, a user error (``GenzipError``) prints one line and exits 2, and ``--debug``
shows tracebacks.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from genzip.tools.cli_common import add_common_flags, guarded


def main(prog: str, doc: str | None, add_arguments: Callable[[argparse.ArgumentParser], None],
         run: Callable[[argparse.Namespace], int], argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) with the script's options plus
    ``--debug``/``--quiet``, then run it inside genzip's error boundary."""
    first = (doc or "").strip().splitlines()
    parser = argparse.ArgumentParser(prog=prog, description=first[0] if first else None)
    add_arguments(parser)
    add_common_flags(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    return guarded(prog, run, args)
