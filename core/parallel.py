"""Executors: where a search runs its independent, deterministic work units.

A search describes its workers once (``factory(*args, threads=T)`` builds one: an ORT
session loaded once, plus what every unit reads) and hands the executor a list of
small units. Invariant, whatever the executor::

    pool.map(method, units, *shared) == [worker.method(unit, *shared) for unit in units]

in unit order, with the same worker state, so results are identical to the serial
path as long as a worker's ``method`` depends only on its arguments (ORT's CPU
kernels are deterministic for a given graph, thread count aside; see tests).

* :class:`SerialExecutor` (the default): one worker in this process, built with the
  caller's thread count (ORT's default). This is the path genzip always ran.
* :class:`RayExecutor` (``genzip[dist]``): ``--workers N`` starts a local Ray cluster
  with N single-threaded workers; an address (``--ray-address`` or ``RAY_ADDRESS``)
  joins an existing one. Each worker is a Ray actor holding one worker object; the
  factory's arguments are put in the object store once and the ``shared`` arguments
  of a map once per map, so a unit moves only itself and its result. An actor that
  dies is restarted (its worker rebuilt) and its unit retried, up to ``RETRIES``.
  A map that stops early (Ctrl-C, an error) cancels what it sent; closing the pool
  kills its actors.

Units already answered by a search's cache are never handed to a map (the caller
filters them), so caches stay where they are: on the driver.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from typing import Any

from genzip.errors import GenzipError

DIST_EXTRA = "pip install 'genzip[dist]' (Ray)"
RETRIES = 3  # restarts of a dead actor, and retries of the unit it was running
Progress = Callable[[int, int], None] | None  # (units done, units in the map)


def _import_ray(flag: str):
    try:
        import ray
    except ImportError:
        raise GenzipError(f"{flag} needs Ray, which is not installed", f"{DIST_EXTRA}, or drop {flag}") from None
    return ray


class SerialPool:
    """One worker in this process."""

    def __init__(self, worker: Any):
        self.worker = worker

    def put(self, obj):
        """A handle to pass as a ``shared`` argument of several maps (here: ``obj`` itself)."""
        return obj

    def map(self, method: str, units: Sequence, *shared, progress: Progress = None) -> list:
        fn, out = getattr(self.worker, method), []
        for unit in units:
            out.append(fn(unit, *shared))
            if progress:
                progress(len(out), len(units))
        return out

    def close(self) -> None:
        self.worker = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SerialExecutor:
    """Today's path: every unit in this process, in order."""

    workers = 1
    distributed = False

    def pool(self, factory: Callable[..., Any], *args, threads: int | None = None) -> SerialPool:
        return SerialPool(factory(*args, threads=threads))

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Host:
    """The Ray actor: one worker object, built on the first unit after each (re)start of
    the actor process. Its arguments come as references nested in every call, never as
    constructor arguments: Ray cannot re-resolve those for a restarted actor reliably
    (ray-project/ray#53727), while the pool holds these for as long as it lives."""

    def __init__(self, factory, threads):
        self.factory, self.threads, self.worker = factory, threads, None

    def call(self, arg_refs: list, method: str, unit, *shared):
        if self.worker is None:
            import ray

            self.worker = self.factory(*ray.get(arg_refs), threads=self.threads)
        return getattr(self.worker, method)(unit, *shared)

    def pid(self) -> int:
        return os.getpid()


class RayPool:
    """``workers`` actors of one worker kind; units go to whichever actor is idle."""

    def __init__(self, ray, factory: Callable[..., Any], args: tuple, workers: int, threads: int):
        self.ray = ray
        actor = ray.remote(num_cpus=threads, max_restarts=RETRIES, max_task_retries=RETRIES)(_Host)
        self._args = [ray.put(a) for a in args]  # held here: a restarted actor reads them again
        self.actors = [actor.remote(factory, threads) for _ in range(workers)]

    def pids(self) -> list[int]:
        """The actors' process ids (tests kill one)."""
        return self.ray.get([a.pid.remote() for a in self.actors])

    def put(self, obj):
        """Store ``obj`` in the object store once; pass the handle as a ``shared`` argument
        of several maps (a node fetches it once, a unit carries only the reference)."""
        return self.ray.put(obj)

    def map(self, method: str, units: Sequence, *shared, progress: Progress = None) -> list:
        ray = self.ray
        shared_refs = [s if isinstance(s, ray.ObjectRef) else ray.put(s) for s in shared]
        results: list = [None] * len(units)
        pending: dict = {}  # ObjectRef -> (unit index, actor)
        idle, sent, done, finished = list(self.actors), 0, 0, False
        try:
            while sent < len(units) or pending:
                while idle and sent < len(units):
                    actor = idle.pop()
                    pending[actor.call.remote(self._args, method, units[sent], *shared_refs)] = (sent, actor)
                    sent += 1
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    index, actor = pending.pop(ref)
                    results[index] = self._get(ref)
                    idle.append(actor)
                    done += 1
                    if progress:
                        progress(done, len(units))
            finished = True
        finally:
            if not finished:  # Ctrl-C or a failed unit: stop the rest
                for ref in pending:
                    ray.cancel(ref)
        return results

    def _get(self, ref):
        ray = self.ray
        try:
            return ray.get(ref)
        except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as e:
            raise GenzipError(f"a Ray worker died {RETRIES + 1} times running one unit "
                              f"({str(e).strip().splitlines()[0]})",
                              "check the workers' memory and logs (ray logs), or run without --workers") from None

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RayExecutor:
    """Workers on a Ray cluster: a local one this executor starts (``workers``) or an
    existing one at ``address``. Closing it shuts down only a cluster it started."""

    distributed = True

    def __init__(self, workers: int | None = None, address: str | None = None):
        if workers is not None and workers < 1:
            raise GenzipError(f"--workers {workers} must be >= 1", "pass a positive worker count")
        flag = "--ray-address" if address else "--workers"
        ray = self.ray = _import_ray(flag)
        self._owner = False
        if address:
            _check_reachable(address)
        if ray.is_initialized():  # this process already joined a cluster (a library caller)
            pass
        elif address:
            try:
                ray.init(address=address, log_to_driver=False, logging_level="ERROR")
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise GenzipError(f"cannot reach the Ray cluster at {address}: {_first_line(e)}",
                                  "start one with `ray start --head` and pass its address (host:port), "
                                  "or unset RAY_ADDRESS") from None
            self._owner = True
        else:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
            self._owner = True
        self.workers = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))

    def sized(self, workers: int) -> RayExecutor:
        """This cluster with ``workers`` actors per pool (benchmarks compare 1 and N in one run);
        closing the view leaves the cluster up."""
        view = object.__new__(RayExecutor)
        view.ray, view._owner, view.workers = self.ray, False, workers
        return view

    def pool(self, factory: Callable[..., Any], *args, threads: int | None = None) -> RayPool:
        """``threads`` is ignored: every Ray worker is single-threaded (one CPU each)."""
        return RayPool(self.ray, factory, args, self.workers, 1)

    def close(self) -> None:
        if self._owner and self.ray.is_initialized():
            self.ray.shutdown()
        self._owner = False

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds, not minutes: ``ray.init`` retries an unreachable GCS for a long time.
    ``auto`` / ``local`` (Ray finds the cluster itself) are left to Ray."""
    if address in ("auto", "local"):
        return
    host, _, port = address.split("://")[-1].rpartition(":")
    why = None
    if not host or not port.isdigit():
        why = "not host:port"
    else:
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
        except OSError as e:
            why = e.strerror or type(e).__name__
    if why:
        raise GenzipError(f"cannot reach the Ray cluster at {address}: {why}",
                          "start one with `ray start --head` and pass its address (host:port), "
                          "or unset RAY_ADDRESS")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def executor(workers: int | None = None, address: str | None = None) -> SerialExecutor | RayExecutor:
    """What ``--workers`` / ``--ray-address`` ask for (``address`` falls back to ``RAY_ADDRESS``):
    serial when neither is given, else Ray."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if workers is None and address is None:
        return SerialExecutor()
    return RayExecutor(workers, address)
