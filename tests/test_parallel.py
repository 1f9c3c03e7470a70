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


def _sensitivity(executor, cache: str = "use-cache=false") -> str:
    model = mlp(**DIMS)
    context = PassContext(calibration=feeds_for(model, 5, n=3), executor=executor)
    for p in build_pipeline(SENS.replace("use-cache=false", cache)).passes:
        p(model, context)
    return model.metadata_props[RESULT_KEY]


class _Hooked:
    """The module's Ray executor, with ``action(pool)`` run once on the driver after the
    3rd unit of a sweep returns (mid-sweep: the sweeps below have 20 units)."""

    def __init__(self, inner, action):
        self.inner, self.action, self.distributed, self.workers, self.pools = inner, action, True, inner.workers, []

    def pool(self, *args, **kwargs):
        pool = self.inner.pool(*args, **kwargs)
        self.pools.append(pool)
        plain_map = pool.map

        def hooked_map(method, units, *shared, progress=None):
            def hooked_progress(done, total):
                if done == 3:
                    self.action(pool)
                if progress:
                    progress(done, total)
            return plain_map(method, units, *shared, progress=hooked_progress)

        pool.map = hooked_map
        return pool


def test_sensitivity_on_workers_equals_serial_and_survives_a_killed_worker(cluster, tmp_path):
    serial = _sensitivity(None)
    killed = []

    def kill_one(pool):
        killed.append(pool.pids()[0])
        os.kill(killed[0], signal.SIGKILL)

    # Two workers, one of them SIGKILLed mid-sweep: restarted, its unit retried, same table.
    assert _sensitivity(_Hooked(cluster, kill_one)) == serial
    assert killed
    assert json.loads(serial)["layers"][0]["cost"]["sqnr"][1] > 0

    def interrupt(pool):
        raise KeyboardInterrupt

    ctrl_c = _Hooked(cluster, interrupt)
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C: the actors are killed, no cache entry is written
        _sensitivity(ctrl_c, f"cache={tmp_path}")
    assert ctrl_c.pools[0].actors == [] and not (tmp_path / "sensitivity").exists()


def test_plan_search_on_workers_equals_serial(cluster, tmp_path_factory):
    folder = compiled(tmp_path_factory)
    model = PlannedModel(folder)
    c, u = sampler.default_conditioning(model, 1, seed=0)
    serial = search.greedy_search(model, c, u, delta=0.01, steps=4, cfg=4.5)
    spread = search.greedy_search(model, c, u, delta=0.01, steps=4, cfg=4.5, executor=cluster)
    assert spread.plan == serial.plan and spread.losses == serial.losses
    assert (spread.latents == serial.latents).all()
    assert serial.calls < spread.calls <= serial.max_calls  # speculative candidates in waves of 2
    assert len([m for m, n in serial.plan.counts().items() if n]) >= 3  # a mixed plan: later candidates count


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


def test_moa_profile_on_workers_equals_serial(cluster):
    from tiny_llm import one_layer_llama

    from genzip.searches import moa_profile

    module = one_layer_llama()
    kwargs = dict(lengths=[16, 24], configs=[(0.0, 0.25), (4.0, 0.5), (0.0, 1.0)], sinks=2, max_windows=3)
    serial = moa_profile.profile_module(module, **kwargs)
    spread = moa_profile.profile_module(module, **kwargs, executor=cluster)
    assert serial.windows == spread.windows == [3, 3]
    assert (serial.loss == spread.loss).all() and serial.loss.max() > 0


def test_eep_search_on_workers_equals_serial(cluster):
    """One new plan per unit: the same best plan, history, evaluations and cache hits."""
    import torch
    import transformers

    from genzip.searches import eep

    config = transformers.MixtralConfig(vocab_size=48, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=1, num_local_experts=4,
                                        num_experts_per_tok=2, max_position_embeddings=32)
    torch.manual_seed(0)
    module = transformers.MixtralForCausalLM(config).eval()
    fit = torch.randint(0, 48, (4, 12), generator=torch.Generator().manual_seed(1))
    kwargs = dict(keep=2, population=4, generations=2, seed=3)
    serial = eep.search(module, fit, **kwargs)
    spread = eep.search(module, fit, **kwargs, executor=cluster)
    assert serial.best.key() == spread.best.key() and serial.history == spread.history
    assert (serial.evals, serial.cache_hits) == (spread.evals, spread.cache_hits) and serial.evals > 4
