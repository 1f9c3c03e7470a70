"""Polygraphy data loader that feeds an artifact's real example inputs (``inputs.npz``).

Use::

    polygraphy run ARTIFACT/model.onnx --onnxrt \\
        --data-loader-script $(python -c 'import genzip.tools.polygraphy_loader as m; print(m.__file__)'):load_data

Polygraphy imports this file and calls ``load_data()`` with no arguments, so the
artifact is located, in this order:

1. ``$GENZIP_ARTIFACT``: an artifact folder, a model file inside one, or an ``.npz``;
2. the command line of the running process (``sys.argv``, which is Polygraphy's own):
   the first existing ``*.onnx`` argument is the model, and its folder the artifact.

Invariant: ``load_data`` yields exactly the arrays of ``inputs.npz`` (one feed
dict, names and dtypes unchanged) or raises ``GenzipError`` saying which of the two
ways to point at the artifact to use; it never invents data.
"""

from __future__ import annotations

import os
import sys
from collections import OrderedDict
from collections.abc import Iterator, Sequence

import numpy as np

from genzip.errors import GenzipError

ENV_VAR = "GENZIP_ARTIFACT"
INPUTS_NAME = "inputs.npz"


def _inputs_near(path: str) -> str | None:
    if path.endswith(".npz") and os.path.isfile(path):
        return path
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    candidate = os.path.join(folder, INPUTS_NAME)
    return candidate if os.path.isfile(candidate) else None


def locate_inputs(argv: Sequence[str] | None = None, environ: dict[str, str] | None = None) -> str:
    """Path of the ``inputs.npz`` to feed (see the module docstring for the search order)."""
    environ = os.environ if environ is None else environ
    argv = sys.argv if argv is None else argv
    pointed = environ.get(ENV_VAR)
    if pointed:
        found = _inputs_near(pointed)
        if not found:
            raise GenzipError(f"${ENV_VAR}={pointed} has no {INPUTS_NAME} beside it",
                              "point it at an artifact folder written by genzip-compile")
        return found
    for arg in argv[1:]:
        if arg.endswith(".onnx") and os.path.isfile(arg):
            found = _inputs_near(arg)
            if found:
                return found
    raise GenzipError(f"no {INPUTS_NAME} found for the Polygraphy data loader",
                      f"run polygraphy on ARTIFACT/model.onnx or set {ENV_VAR}=ARTIFACT")


def load_data() -> Iterator[OrderedDict[str, np.ndarray]]:
    """Polygraphy's data-loader entry point: yields the artifact's example feed dict."""
    from genzip.backends.runner import load_npz

    yield OrderedDict(load_npz(locate_inputs()))
