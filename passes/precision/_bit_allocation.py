"""Bit allocation as an integer program (MixDQ / LLM-MQ), solved with ``scipy.optimize.milp``.

Given L layers with parameter counts ``params[l]``, F candidate formats with weight
bits ``bits[f]``, and a sensitivity matrix ``cost[l, f]`` (lower is better), choose
one format per layer:

    minimize    sum_{l,f} cost[l,f] · x[l,f]
    subject to  sum_f x[l,f] = 1                                   for every layer l
                sum_{l,f} params[l] · bits[f] · x[l,f] <= B · sum_l params[l]   (avg-bits budget B)
                sum_{l,f} latency[l,f] · x[l,f] <= R · sum_l latency[l, ref]     (optional latency budget)
                x[l,f] in {0, 1};   x[l,f] = 0 where allowed[l,f] is False (e.g. int4 on a Conv)

Invariant: the returned assignment satisfies every constraint, or ``GenzipError``
says the budget is infeasible and what the minimum achievable value is.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from genzip.errors import GenzipError


@dataclasses.dataclass(frozen=True)
class Allocation:
    formats: tuple[str, ...]  # one per layer
    objective: float
    avg_bits: float


def _check(params: np.ndarray, bits: np.ndarray, cost: np.ndarray) -> None:
    if cost.shape != (len(params), len(bits)):
        raise ValueError(f"cost has shape {cost.shape}, expected ({len(params)}, {len(bits)})")
    if not np.isfinite(cost).all():
        raise ValueError("sensitivities must be finite")
    if (params <= 0).any():
        raise ValueError("every layer needs a positive parameter count")



def allocate(
    params,
    formats: list[str],
    bits,
    cost,
    *,
    avg_bits: float,
    latency=None,
    latency_ratio: float | None = None,
    latency_ref: int = -1,
    latency_base: float | None = None,
    allowed=None,
) -> Allocation:
    """Solve the allocation; ``latency[l, f]`` with ``latency_ratio`` adds the latency budget;
    ``latency_base`` replaces ``latency[:, latency_ref].sum()`` as the reference total;
    ``allowed[l, f]`` (bool) limits each layer's formats (disallowed costs are ignored)."""
    params = np.asarray(params, dtype=np.float64)
    bits = np.asarray(bits, dtype=np.float64)
    cost = np.asarray(cost, dtype=np.float64)
    mask = np.ones(cost.shape, bool) if allowed is None else np.asarray(allowed, bool)
    if mask.shape != cost.shape or not mask.any(axis=1).all():
        raise ValueError("allowed must match cost and allow at least one format per layer")
    cost = np.where(mask, cost, 0.0)
    _check(params, bits, cost)
    n_layers, n_formats = cost.shape
    floor = float((params * np.where(mask, bits[None, :], np.inf).min(axis=1)).sum() / params.sum())
    if avg_bits < floor - 1e-9:
        raise GenzipError(
            f"budget avg-bits:{avg_bits:g} is infeasible: the minimum achievable is {floor:.4g} bits",
            f"raise the budget to at least {floor:.4g}",
        )
    n = n_layers * n_formats
    one_per_layer = np.zeros((n_layers, n))
    for layer in range(n_layers):
        one_per_layer[layer, layer * n_formats : (layer + 1) * n_formats] = 1.0
    weight_bits = (params[:, None] * bits[None, :]).reshape(1, n)
    constraints = [
        LinearConstraint(one_per_layer, 1.0, 1.0),
        LinearConstraint(weight_bits, -np.inf, avg_bits * params.sum() + 1e-6),
    ]
    if latency is not None and latency_ratio is not None:
        latency = np.asarray(latency, dtype=np.float64)
        base = float(latency[:, latency_ref].sum()) if latency_base is None else float(latency_base)
        limit = latency_ratio * base
        floor_lat = np.where(mask, latency, np.inf).min(axis=1).sum()
        if floor_lat > limit + 1e-9:
            raise GenzipError(
                f"budget latency:{latency_ratio:g} is infeasible: the minimum achievable is "
                f"{floor_lat / base:.3g}",
                "raise the latency ratio",
            )
        constraints.append(LinearConstraint(latency.reshape(1, n), -np.inf, limit + 1e-9))
    res = milp(
        c=cost.reshape(n),
        constraints=constraints,
        integrality=np.ones(n),
        bounds=Bounds(0, mask.reshape(n).astype(np.float64)),
    )
    if res.status != 0 or res.x is None:
        raise GenzipError(f"no allocation meets the budget ({res.message})", "raise the budget")
    choice = res.x.reshape(n_layers, n_formats).argmax(axis=1)
    chosen_bits = bits[choice]
    return Allocation(
        formats=tuple(formats[i] for i in choice),
        objective=float(cost[np.arange(n_layers), choice].sum()),
        avg_bits=float((params * chosen_bits).sum() / params.sum()),
    )


def brute_force(params, formats: list[str], bits, cost, *, avg_bits: float) -> Allocation:
    """Exhaustive reference for small instances (tests); same objective and constraint."""
    params = np.asarray(params, dtype=np.float64)
    bits = np.asarray(bits, dtype=np.float64)
    cost = np.asarray(cost, dtype=np.float64)
    best = None
    for choice in itertools.product(range(len(formats)), repeat=len(params)):
        idx = np.array(choice)
        avg = float((params * bits[idx]).sum() / params.sum())
        if avg > avg_bits + 1e-9:
            continue
        obj = float(cost[np.arange(len(params)), idx].sum())
        if best is None or obj < best.objective - 1e-12:
            best = Allocation(tuple(formats[i] for i in idx), obj, avg)
    if best is None:
        raise GenzipError(f"budget avg-bits:{avg_bits:g} is infeasible", "raise the budget")
    return best
