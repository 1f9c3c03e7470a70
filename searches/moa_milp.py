"""MoA plan selection: one (alpha, beta) rule per head under a density budget, by MILP.

Problem (solved exactly with ``scipy.optimize.milp``, HiGHS)::

    minimize    sum_{k,l,h,c} loss[k,l,h,c] · x[l,h,c]
    subject to  sum_c x[l,h,c] = 1                          each head picks one rule
                x[l,h,c] <= y[l,c]                          a head's rule is one its layer uses
                sum_c y[l,c] <= K                           at most K distinct rules per layer
                mean_{l,h} sum_c density[k,c] · x[l,h,c] <= budget   for every profiled length k
                x, y binary

Invariant: a returned ``choice[l][h]`` (rule index) is an optimum of that problem;
when no assignment meets the budget, a GenzipError names the minimum achievable
density (the least worst-length mean density of any assignment obeying K,
itself found by the same MILP).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from genzip.errors import GenzipError

# Slack on the density row so a budget equal to an achievable density is not lost
# to HiGHS's feasibility tolerance.
_DENSITY_TOL = 1e-9


@dataclasses.dataclass(frozen=True)
class Selection:
    choice: np.ndarray  # [L, H] int: index of the chosen rule per head
    objective: float  # summed predicted loss increase
    density: list[float]  # achieved mean density per profiled length


def min_density(density: np.ndarray, layers: int, heads: int, max_distinct: int) -> float:
    """The smallest budget any assignment meets (the worst length's mean density, minimized).

    Not simply the sparsest rule: which rule is sparsest can differ between lengths
    (alpha=8 vs beta=0.25 swap at N=32), so this is the same MILP with the budget as
    the objective.
    """
    res = _solve(np.zeros((density.shape[0], layers, heads, density.shape[1])), density,
                 max_distinct=max_distinct, budget=None, time_limit=60.0)
    return float(res.x[-1])


def check_feasible(density: np.ndarray, budget: float, layers: int, heads: int, max_distinct: int) -> None:
    """Raise the user-facing error when no assignment can meet ``budget``."""
    if max_distinct < 1:
        raise GenzipError(f"moa-search: --max-distinct must be >= 1, got {max_distinct}")
    floor = min_density(density, layers, heads, max_distinct)
    if budget < floor - _DENSITY_TOL:
        raise GenzipError(f"moa-search: density budget {budget:g} is infeasible; the minimum achievable "
                          f"density with these rules is {floor:.4f}",
                          f"use --budget {floor:.4f} or more, or add sparser rules (smaller --alphas/--betas)")


def evaluate(choice: np.ndarray, loss: np.ndarray, density: np.ndarray) -> tuple[float, list[float]]:
    """Objective and per-length mean density of an assignment ``choice`` [L, H]."""
    layers, heads = choice.shape
    li, hi = np.meshgrid(np.arange(layers), np.arange(heads), indexing="ij")
    objective = float(loss[:, li, hi, choice].sum())
    return objective, [float(d) for d in density[:, choice].mean(axis=(1, 2))]


def select_rules(loss: np.ndarray, density: np.ndarray, *, budget: float, max_distinct: int,
                 time_limit: float = 60.0) -> Selection:
    """Solve the plan MILP. ``loss`` [K, L, H, C], ``density`` [K, C]; see the module docstring."""
    if loss.ndim != 4 or density.shape != (loss.shape[0], loss.shape[3]):
        raise ValueError(f"shape mismatch: loss {loss.shape}, density {density.shape}")
    _, layers, heads, n_cfg = loss.shape
    check_feasible(density, budget, layers, heads, max_distinct)
    res = _solve(loss, density, max_distinct=max_distinct, budget=budget, time_limit=time_limit)
    x = np.rint(res.x[: layers * heads * n_cfg]).reshape(layers, heads, n_cfg)
    choice = x.argmax(axis=2)
    objective, achieved = evaluate(choice, loss, density)
    return Selection(choice, objective, achieved)


def _solve(loss: np.ndarray, density: np.ndarray, *, max_distinct: int, budget: float | None, time_limit: float):
    """Columns x[l,h,c], y[l,c], t (the density bound). ``budget=None``: minimize t instead of the loss."""
    from scipy import optimize, sparse

    n_len, layers, heads, n_cfg = loss.shape
    n_x, n_y = layers * heads * n_cfg, layers * n_cfg
    t_col = n_x + n_y

    def xi(layer, head, cfg):
        return (layer * heads + head) * n_cfg + cfg

    def yi(layer, cfg):
        return n_x + layer * n_cfg + cfg

    rows, cols, vals, lo, hi = [], [], [], [], []

    def add_row(entries, low, high):
        r = len(lo)
        for col, val in entries:
            rows.append(r), cols.append(col), vals.append(val)
        lo.append(low), hi.append(high)

    for layer in range(layers):
        for head in range(heads):
            add_row([(xi(layer, head, c), 1.0) for c in range(n_cfg)], 1.0, 1.0)
            for c in range(n_cfg):
                add_row([(xi(layer, head, c), 1.0), (yi(layer, c), -1.0)], -np.inf, 0.0)
        add_row([(yi(layer, c), 1.0) for c in range(n_cfg)], -np.inf, float(max_distinct))
    for k in range(n_len):
        # mean density <= t, written as a sum to keep coefficients O(1).
        add_row([(xi(layer, head, c), float(density[k, c]))
                 for layer in range(layers) for head in range(heads) for c in range(n_cfg)]
                + [(t_col, -float(layers * heads))], -np.inf, _DENSITY_TOL * layers * heads)
    a = sparse.csr_array((vals, (rows, cols)), shape=(len(lo), t_col + 1))
    if budget is None:
        cost = np.zeros(t_col + 1)
        cost[t_col] = 1.0
        t_bounds = (0.0, max(1.0, float(density.max())))
    else:
        cost = np.concatenate([loss.sum(axis=0).reshape(-1), np.zeros(n_y + 1)])
        t_bounds = (budget, budget)
    integrality = np.ones(t_col + 1)
    integrality[t_col] = 0
    lb, ub = np.zeros(t_col + 1), np.ones(t_col + 1)
    lb[t_col], ub[t_col] = t_bounds
    res = optimize.milp(cost, integrality=integrality, bounds=optimize.Bounds(lb, ub),
                        constraints=optimize.LinearConstraint(a, lo, hi), options={"time_limit": time_limit})
    if res.x is None:
        raise GenzipError(f"moa-search: the MILP found no plan ({res.message})", "raise --budget or --max-distinct")
    return res
