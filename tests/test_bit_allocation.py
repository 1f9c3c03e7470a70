"""The MILP bit allocation against brute force, budgets and infeasibility."""

from __future__ import annotations

import numpy as np
import pytest

from genzip.errors import GenzipError
from genzip.passes.precision._bit_allocation import allocate, brute_force

FORMATS = ["w4a16", "w8a8", "fp16"]
BITS = [4, 8, 16]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("budget", [4.5, 6.0, 9.0])
def test_milp_equals_brute_force_on_toy_instances(seed, budget):
    rng = np.random.default_rng(seed)
    layers = 7
    params = rng.integers(100, 5000, size=layers)
    # Sensitivity falls with bits, with per-layer scale, like real measurements.
    scale = rng.lognormal(size=(layers, 1))
    cost = scale * np.array([1.0, 0.2, 0.0])[None, :] * rng.uniform(0.5, 1.5, size=(layers, 3))
    got = allocate(params, FORMATS, BITS, cost, avg_bits=budget)
    ref = brute_force(params, FORMATS, BITS, cost, avg_bits=budget)
    assert got.objective == pytest.approx(ref.objective, rel=1e-9, abs=1e-12)
    assert got.avg_bits <= budget + 1e-9


def test_budget_at_the_floor_gives_all_lowest_bits():
    got = allocate([10, 20, 30], FORMATS, BITS, np.ones((3, 3)), avg_bits=4.0)
    assert got.formats == ("w4a16",) * 3 and got.avg_bits == 4.0


def test_generous_budget_picks_least_sensitive():
    cost = np.array([[3.0, 1.0, 0.0], [2.0, 1.0, 0.5]])
    assert allocate([1, 1], FORMATS, BITS, cost, avg_bits=16).formats == ("fp16", "fp16")


def test_infeasible_budget_names_the_minimum():
    with pytest.raises(GenzipError, match="minimum achievable is 4"):
        allocate([10, 20], FORMATS, BITS, np.ones((2, 3)), avg_bits=3.0)


def test_latency_budget_is_respected():
    cost = np.array([[1.0, 0.5, 0.0]] * 4)
    latency = np.array([[1.0, 0.6, 1.0]] * 4)  # w8a8 fastest, as an int8 GEMM is
    got = allocate([1] * 4, FORMATS, BITS, cost, avg_bits=16, latency=latency, latency_ratio=0.7)
    chosen = [FORMATS.index(f) for f in got.formats]
    assert latency[np.arange(4), chosen].sum() <= 0.7 * 4 + 1e-9
    with pytest.raises(GenzipError, match="minimum achievable is 0.6"):
        allocate([1] * 4, FORMATS, BITS, cost, avg_bits=16, latency=latency, latency_ratio=0.5)


def test_shape_mismatch_is_a_bug_not_a_user_error():
    with pytest.raises(ValueError):
        allocate([1, 2], FORMATS, BITS, np.ones((3, 3)), avg_bits=8)
