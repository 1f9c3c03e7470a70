"""Scale-out on Ray (genzip.parallel): the same sensitivities and plans as the serial path,
a killed worker retried, a bad address and a missing Ray as one-line errors.

One local Ray cluster (2 CPUs) serves the whole module."""

from __future__ import annotations

import json
import os
import signal
import sys

import pytest
from quant_models import feeds_for, mlp
from share_artifacts import compiled

from genzip import parallel
from genzip.errors import GenzipError
from genzip.passes import build_pipeline
from genzip.passes.infra.context import PassContext
from genzip.passes.precision.sensitivity import RESULT_KEY
from genzip.runtime import sampler
from genzip.runtime.model import PlannedModel
from genzip.searches import ditfastattn as search
from genzip.tools import compile_cli

SENS = "annotate-precision{keep-defaults=false},sensitivity{candidates=w8a8,w4a16,w4a8,fp8,fp16 samples=2 use-cache=false}"
DIMS = dict(dims=(64, 64, 64, 64, 32), tokens=16)


@pytest.fixture(scope="module")
def cluster():
    pytest.importorskip("ray", reason="Ray is the genzip[dist] extra")
    with parallel.RayExecutor(workers=2) as executor:
        yield executor


def _sensitivity(executor) -> str:
    model = mlp(**DIMS)
    context = PassContext(calibration=feeds_for(model, 5, n=3), executor=executor)
    for p in build_pipeline(SENS).passes:
        p(model, context)
    return model.metadata_props[RESULT_KEY]


class _KillOne:
    """A Ray executor whose sweep kills one worker process after the 3rd unit returns."""

    def __init__(self, inner):
        self.inner, self.distributed, self.workers, self.killed = inner, True, inner.workers, []

    def pool(self, *args, **kwargs):
        pool = self.inner.pool(*args, **kwargs)
        pids, plain_map = pool.pids(), pool.map

        def map_and_kill(method, units, *shared, progress=None):
            def progress_and_kill(done, total):
                if done == 3 and not self.killed:
                    os.kill(pids[0], signal.SIGKILL)
                    self.killed.append(pids[0])
                if progress:
                    progress(done, total)
            return plain_map(method, units, *shared, progress=progress_and_kill)

        pool.map = map_and_kill
        self.pids_after = pool.pids
        return pool


def test_sensitivity_on_workers_equals_serial_and_survives_a_killed_worker(cluster):
    serial = _sensitivity(None)
    assert _sensitivity(cluster) == serial
    killer = _KillOne(cluster)
    assert _sensitivity(killer) == serial  # 4 layers x 5 formats: the kill lands mid-sweep
    assert killer.killed
    assert json.loads(serial)["layers"][0]["cost"]["sqnr"][1] > 0


def test_plan_search_on_workers_equals_serial(cluster, tmp_path_factory):
    folder = compiled(tmp_path_factory)
    model = PlannedModel(folder)
    c, u = sampler.default_conditioning(model, 1, seed=0)
    for delta in (0.01, 0.05):  # mixed plans: some layers take their 2nd..4th candidate
        serial = search.greedy_search(model, c, u, delta=delta, steps=4, cfg=4.5)
        spread = search.greedy_search(model, c, u, delta=delta, steps=4, cfg=4.5, executor=cluster)
        assert spread.plan == serial.plan and spread.losses == serial.losses
        assert (spread.latents == serial.latents).all()
        assert serial.calls <= spread.calls <= serial.max_calls  # speculative candidates in waves of 2
    assert len(set(serial.plan.counts().values()) - {0}) >= 2


def test_unreachable_address_is_one_line_error(capsys):
    with pytest.raises(GenzipError, match="cannot reach the Ray cluster at 127.0.0.1:1"):
        parallel.executor(address="127.0.0.1:1")
    rc = compile_cli.main(["tiny-llama", "--out", "x", "--ray-address", "127.0.0.1:1", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("genzip-compile: error: cannot reach the Ray cluster at 127.0.0.1:1")


def test_workers_without_ray_names_the_extra(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert isinstance(parallel.executor(), parallel.SerialExecutor)  # no flag: the serial path, no Ray
    rc = compile_cli.main(["tiny-llama", "--out", str(tmp_path / "a"), "--workers", "2", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "genzip[dist]" in err[0] and "--workers needs Ray" in err[0]
    assert not (tmp_path / "a").exists()
