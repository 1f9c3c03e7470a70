"""TensorRT build progress as genzip progress lines.

TensorRT reports a build as nested phases with step counts through
``trt.IProgressMonitor`` (``phase_start`` / ``step_complete`` / ``phase_finish``).
``BuildProgress`` turns the outermost phases into lines such as
``TensorRT: Building engine 3/7`` for the caller's ``progress`` callable (the CLI's
progress line), without importing TensorRT; ``monitor`` mixes it into TensorRT's base
class where ``tensorrt`` imports.

Invariant: at most one line per completed step of a phase at nesting depth
``max_depth`` or less, so deep tactic loops do not flood the terminal, and
``step_complete`` always answers True (the build is never cancelled from here).
"""

from __future__ import annotations

from collections.abc import Callable


class BuildProgress:
    def __init__(self, progress: Callable[[str], None], max_depth: int = 1):
        self.progress = progress
        self.max_depth = max_depth
        self._phases: dict[str, tuple[int, int]] = {}  # name -> (depth, steps)

    def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
        depth = self._phases[parent_phase][0] + 1 if parent_phase in self._phases else 0
        self._phases[phase_name] = (depth, num_steps)
        if depth <= self.max_depth:
            self.progress(f"TensorRT: {phase_name} 0/{num_steps}")

    def step_complete(self, phase_name: str, step: int) -> bool:
        depth, steps = self._phases.get(phase_name, (0, 0))
        if depth <= self.max_depth:
            self.progress(f"TensorRT: {phase_name} {step + 1}/{steps}")
        return True

    def phase_finish(self, phase_name: str) -> None:
        self._phases.pop(phase_name, None)


def monitor(trt, progress: Callable[[str], None]):
    """A ``trt.IProgressMonitor`` that reports through ``progress`` (``trt`` is the module)."""

    class _Monitor(BuildProgress, trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            BuildProgress.__init__(self, progress)

    return _Monitor()
