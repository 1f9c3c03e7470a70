"""Shared CLI plumbing: logging, progress lines, and the error boundary.

User errors (``GenzipError``) print one line and exit 2. Anything else is a genzip
bug: one line and exit 1, with the traceback only under ``--debug``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable

from genzip.errors import GenzipError


class Progress:
    """Prints ``genzip: <stage>`` lines with elapsed time to stderr."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        if self.enabled:
            sys.stderr.write(f"genzip [{time.perf_counter() - self.start:6.1f}s] {message}\n")
            sys.stderr.flush()


def add_provider_flags(parser: argparse.ArgumentParser) -> None:
    """``--providers`` / ``--device``: where ONNX Runtime runs (syntax in ``genzip.providers``)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--providers", metavar="LIST",
                       help="ONNX Runtime execution providers, highest priority first, each with optional "
                            "{key=value ...} options, e.g. 'CUDAExecutionProvider{device_id=0},CPUExecutionProvider' "
                            "(short names cpu, cuda, tensorrt; default CPU)")
    group.add_argument("--device", choices=("cpu", "cuda"),
                       help="shorthand: cpu = CPUExecutionProvider; cuda = CUDAExecutionProvider,CPUExecutionProvider")


def providers_from(args: argparse.Namespace):
    """The checked providers the flags ask for, or None (CPU) when neither was given."""
    from genzip.providers import resolve_providers

    if not (args.providers or args.device):
        return None
    return resolve_providers(args.providers, args.device)


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def add_dist_flags(parser: argparse.ArgumentParser) -> None:
    """``--workers`` / ``--ray-address`` of the commands whose searches scale out (genzip.parallel)."""
    group = parser.add_argument_group("scale-out on Ray (pip install 'genzip[dist]')")
    group.add_argument("--workers", type=int, default=None, metavar="N",
                       help="run the search's units on a local Ray cluster of N single-threaded workers")
    group.add_argument("--ray-address", default=None, metavar="ADDR",
                       help="run them on an existing Ray cluster (host:port; default $RAY_ADDRESS)")


def search_executor(args: argparse.Namespace):
    """The executor ``--workers`` / ``--ray-address`` / ``RAY_ADDRESS`` ask for (serial without
    them); a context manager that stops a local cluster it started."""
    from genzip.parallel import executor

    return executor(getattr(args, "workers", None), getattr(args, "ray_address", None))


class _ThirdPartyRootFilter(logging.Filter):
    """Drops records libraries send through the root logger (onnxruntime.quantization's
    "Please consider to run pre-processing before quantization"), which no logger name
    can silence."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != "root":
            return True
        return not any(f"{os.sep}{lib}{os.sep}" in record.pathname for lib in _QUIET_ROOT_USERS)


_QUIET_ROOT_USERS = ("onnxruntime", "onnxscript", "onnx_ir", "diffusers", "transformers")


def setup_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not debug:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_ThirdPartyRootFilter())
        # diffusers and transformers configure their own loggers' levels from these when first
        # imported (after this runs), e.g. diffusers' "accelerate was not found" warning.
        os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        # torch's exporter and diffusers are chatty at WARNING about things users can't act on.
        for noisy in ("torch", "torch.onnx", "torch._dynamo", "diffusers", "transformers", "onnxscript"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
        import warnings

        warnings.filterwarnings("ignore")


def guarded(prog: str, body: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    setup_logging(args.debug)
    try:
        return body(args)
    except GenzipError as e:
        if args.debug:
            raise
        sys.stderr.write(f"{prog}: error: {e}\n")
        return e.exit_code
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted\n")
        return 130
    except Exception as e:  # noqa: BLE001 - the CLI's outermost boundary: one line unless --debug
        if args.debug:
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        sys.stderr.write(f"{prog}: internal error: {type(e).__name__}: {first} (rerun with --debug for a traceback)\n")
        return 1
