"""Run a pipeline with MLIR-style instrumentation.

After each pass that reports ``modified``, the graph is verified (``verify``:
``full`` = ONNX checker + strict shape inference + structure, ``structure``, or
``none``). IR can be printed after named passes or after every change, each
pass is timed, and a pass failure writes a reproducer folder holding the model
exactly as it was before the failing pass plus the spec string that reproduces it.
A transforming pass that changed nothing it was asked to stops the pipeline with
``NoOpError`` (a user error saying why) unless its spec says ``allow-noop=true``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from typing import IO, Any

import onnx
import onnx_ir as ir

from genzip.errors import GenzipError
from genzip.passes.infra.context import EMPTY, PassContext, check_needs
from genzip.passes.infra.contract import ALLOW_NOOP, NoOpError
from genzip.passes.infra.invariants import verify
from genzip.passes.infra.pipeline import Pipeline

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class PassRecord:
    name: str
    spec: str
    modified: bool
    seconds: float
    stats: dict[str, Any]


@dataclasses.dataclass
class Instrumentation:
    verify: str = "full"
    print_ir_after: frozenset[str] = frozenset()
    print_ir_after_change: bool = False
    pass_timing: bool = False
    reproducer_dir: str | None = None
    stream: IO[str] | None = None
    progress: Callable[[int, int, str], None] | None = None


class PassFailure(RuntimeError):
    """A pass raised or broke an invariant. ``reproducer`` is where its input was saved."""

    def __init__(self, message: str, pass_name: str, reproducer: str | None):
        super().__init__(message)
        self.pass_name = pass_name
        self.reproducer = reproducer


def _write_reproducer(folder: str, proto: onnx.ModelProto, spec: str, error: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(folder)) or ".", exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".genzip-repro-", dir=os.path.dirname(os.path.abspath(folder)))
    onnx.save_model(proto, os.path.join(tmp, "model.onnx"))
    with open(os.path.join(tmp, "spec.txt"), "w") as f:
        f.write(spec + "\n")
    with open(os.path.join(tmp, "error.txt"), "w") as f:
        f.write(error + "\n")
    with open(os.path.join(tmp, "README.md"), "w") as f:
        f.write(
            "Reproduce with:\n\n"
            f"    genzip-compile {folder}/model.onnx --target onnx --passes \"$(cat {folder}/spec.txt)\" "
            "--out /tmp/repro --force --debug\n"
        )
    if os.path.exists(folder):
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder


def run_pipeline(model: ir.Model, pipeline: Pipeline, inst: Instrumentation | None = None,
                 context: PassContext | None = None) -> list[PassRecord]:
    """Run every pass of ``pipeline`` on ``model`` in place, each handed ``context``;
    return one record per pass. The context is checked against the passes' needs first."""
    inst = inst or Instrumentation()
    context = context if context is not None else EMPTY
    check_needs(pipeline.passes, context.provides(), "the pass context")
    stream = inst.stream or sys.stderr
    records: list[PassRecord] = []
    total = len(pipeline.passes)
    for index, (item, pass_) in enumerate(zip(pipeline.specs, pipeline.passes)):
        if inst.progress:
            inst.progress(index, total, item.name)
        snapshot = ir.to_proto(model) if inst.reproducer_dir else None
        start = time.perf_counter()
        try:
            result = pass_(model, context)
            if result.modified:
                verify(model, inst.verify)
        except GenzipError:
            raise  # the user's input is wrong, not the pass: no reproducer
        except Exception as e:  # noqa: BLE001 - crash boundary: any pass bug gets a reproducer, then re-raises
            repro = None
            message = f"pass '{item}' failed: {e}"
            if snapshot is not None:
                repro = _write_reproducer(inst.reproducer_dir, snapshot, str(item), message)
                message += f" (reproducer: {repro})"
            raise PassFailure(message, item.name, repro) from e
        seconds = time.perf_counter() - start
        problem = pass_.noop_problem(model, result, pipeline.passes[index + 1:])
        if problem and not pass_.allow_noop:
            raise NoOpError(f"pass '{item.name}' was asked for but changed nothing: {problem}",
                            f"fix the pipeline or the model, or give it {ALLOW_NOOP}=true to accept that")
        if problem:
            logger.info("pass %s changed nothing (allowed): %s", item, problem)
        stats = dict(getattr(result, "stats", {}) or {})
        records.append(PassRecord(item.name, str(item), bool(result.modified), seconds, stats))
        logger.info("pass %s: modified=%s %.3fs %s", item, result.modified, seconds, stats)
        if item.name in inst.print_ir_after or "all" in inst.print_ir_after or (
            inst.print_ir_after_change and result.modified
        ):
            stream.write(f"// -----// IR after {item} (modified={result.modified}) //----- //\n")
            stream.write(str(model.graph) + "\n")
    if inst.pass_timing and records:
        stream.write(format_timing(records))
    return records


def format_timing(records: list[PassRecord]) -> str:
    total = sum(r.seconds for r in records) or 1e-12
    lines = ["===-------------------------------------------------------------------===",
             "                      ... Pass execution timing report ...",
             "===-------------------------------------------------------------------===",
             f"  Total Execution Time: {total:.4f} seconds",
             "   ----Wall Time----  ----Name----"]
    for r in records:
        stat = " ".join(f"{k}={v}" for k, v in r.stats.items())
        lines.append(f"   {r.seconds:8.4f} ({100 * r.seconds / total:5.1f}%)  {r.spec}  modified={r.modified} {stat}")
    return "\n".join(lines) + "\n"
