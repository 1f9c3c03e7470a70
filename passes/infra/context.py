"""The compile context: what a pass may use besides the graph and its options.

Invariant: a pass reads its inputs only from the model, its ``Options`` and the
``PassContext`` it is handed; no module global or ``ContextVar`` carries pass
inputs. A pass declares the context fields it needs (``GenzipPass.needs``) the
way it declares facts, so the driver checks a pipeline against what a model
source can provide (:func:`check_needs`) before anything is loaded or exported.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from genzip.errors import GenzipError

Feeds = dict[str, np.ndarray]
# A list of feed dicts, or a zero-argument callable returning one (a preset's DDIM
# trajectory is only sampled when a pipeline calibrates).
CalibrationSource = list[Feeds] | Callable[[], list[Feeds]]

# The names passes use in ``needs``; each is a field of PassContext.
CALIBRATION = "calibration"
TORCH_MODULE = "torch_module"
EXAMPLE_INPUTS = "example_inputs"
NEEDS = (CALIBRATION, TORCH_MODULE, EXAMPLE_INPUTS)

# How a user supplies each need, for the one-line error.
_FIXES = {
    CALIBRATION: "give the pass a calibration set with data=FILE.npz (one array per graph input, "
                 "samples on axis 0), e.g. calibrate{data=calib.npz}, or the whole compile one with "
                 "--calib-data FILE.npz|DIR (genzip.compile(calib_data=...)), or use a preset",
    TORCH_MODULE: "compile a PyTorch source (preset, Hugging Face folder or package.module:function) "
                  "so genzip holds the eager module",
    EXAMPLE_INPUTS: "pass example inputs with the model",
}


@dataclasses.dataclass(frozen=True)
class PassContext:
    """Inputs of passes that the graph does not hold. Built by the compile driver;
    tests and library callers build their own. Every field may be absent."""

    example_inputs: Mapping[str, np.ndarray] | None = None
    calibration: CalibrationSource | None = None
    torch_module: Any = None  # the eager torch.nn.Module genzip exported, if any
    cache_dir: str | None = None  # None: $GENZIP_CACHE_DIR or ~/.cache/genzip
    seed: int = 0
    progress: Callable[[str], None] | None = None
    # Where searches run their independent units (genzip.parallel: a SerialExecutor or a
    # RayExecutor); None runs them in this process. Results never depend on it.
    executor: Any = None

    def provides(self) -> frozenset[str]:
        return frozenset(n for n in NEEDS if getattr(self, n) is not None)

    def calibration_samples(self, pass_name: str) -> list[Feeds]:
        """The calibration set as a list (sampling a lazy source now)."""
        source = self.calibration
        if source is None:
            raise GenzipError(f"{pass_name} has no calibration data for this model", _FIXES[CALIBRATION])
        return list(source() if callable(source) else source)

    def report(self, message: str) -> None:
        if self.progress is not None:
            self.progress(message)


EMPTY = PassContext()


def calibration_need(data: str | None) -> frozenset[str]:
    """What a pass that reads calibration samples needs: nothing when it was given its
    own ``data=FILE``, else the context's calibration set."""
    return frozenset() if data else frozenset({CALIBRATION})


# The export axis kinds a pass may need static (genzip.frontend.dynamic_axes; passes do
# not import the frontend), and the words errors use for them.
STATIC_AXES = {"text": "caption length (text)", "size": "latent height/width (size)", "seq": "sequence length (seq)"}


def static_axis_conflicts(passes: Iterable[Any], dynamic: Iterable[str]) -> list[tuple[str, str, str]]:
    """``(pass name, axis kind, why)`` for each pass that needs static an axis in ``dynamic``."""
    dynamic = set(dynamic)
    return [(p.name, kind, why) for p in passes for kind, why in p.static_axes().items() if kind in dynamic]


def check_needs(passes: Iterable[Any], provided: frozenset[str], source: str) -> None:
    """Raise the one-line error for the first pass needing what ``source`` cannot provide."""
    for pass_ in passes:
        missing = sorted(pass_.needs() - provided)
        if missing:
            need = missing[0]
            raise GenzipError(
                f"pass '{pass_.name}' needs {need.replace('_', ' ')}, which {source} does not provide",
                _FIXES[need],
            )
