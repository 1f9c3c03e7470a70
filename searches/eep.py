"""EEP (Efficient Expert Pruning): gradient-free evolutionary search of an expert plan.

An individual is, per MoE layer, the kept experts (``keep`` of them) and EEP's two
matrices restricted to what merging means: the merge weights and the router mapping of
each kept expert on itself and on each pruned expert (kept-to-kept entries stay 0). The population starts from the
router-frequency baseline (keep each layer's most-routed experts, no merging) and
random keep sets; each generation makes children by per-layer crossover and mutation
(swap a kept and a pruned expert in one layer, or add Gaussian noise to one layer's
merge weights), and keeps the ``population`` fittest of parents and children
(elitist, so the best fitness never gets worse and the baseline is the floor).

Invariants: fitness is the mean next-token loss (or KL to the unpruned model) on the
``fit`` windows, evaluated in eager torch with the plan applied exactly as
``expert-prune`` applies it (``moe_experts.applied``); an individual is evaluated at
most once (cache keyed by its rounded plan) and at most ``max_evals`` evaluations
run; the same seed and windows give the same plan.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np
import torch

from genzip.errors import GenzipError
from genzip.parallel import SerialExecutor
from genzip.passes.moe import _plan
from genzip.searches import moe_experts
from genzip.searches.moa_profile import ModuleState

_SIGMA = 0.1  # std of a merge-weight mutation (weights start at 0, self weights at 1)


def _table(keep: tuple[int, ...], m: np.ndarray) -> dict[int, dict[int, float]]:
    """The plan table of a ``[K, E]`` matrix: entries that differ from the selection."""
    table = {}
    for row, t in enumerate(keep):
        src = {s: round(float(m[row, s]), 4) for s in range(m.shape[1])
               if round(float(m[row, s]), 4) != (1.0 if s == t else 0.0)}
        if src:
            table[t] = src
    return table


@dataclasses.dataclass(frozen=True)
class Individual:
    keep: tuple[tuple[int, ...], ...]  # per layer, sorted kept experts
    weights: tuple[np.ndarray, ...]  # per layer [K, E]: row t = kept expert t's merge row
    routers: tuple[np.ndarray, ...]  # per layer [K, E]: EEP's router mapping rows

    def key(self) -> tuple:
        return self.keep, tuple(tuple(np.round(w, 4).ravel().tolist()) for w in self.weights + self.routers)

    def plan(self, num_experts: int, top_k: int) -> _plan.ExpertPlan:
        layers = {i: _plan.LayerPlan(keep, _table(keep, w), _table(keep, r))
                  for i, (keep, w, r) in enumerate(zip(self.keep, self.weights, self.routers))}
        return _plan.ExpertPlan(layers, num_experts=num_experts, top_k=top_k)


def _selection(keep: tuple[int, ...], e: int) -> np.ndarray:
    w = np.zeros((len(keep), e))
    w[np.arange(len(keep)), list(keep)] = 1.0
    return w


def pruning_only(keeps: list[tuple[int, ...]], e: int) -> Individual:
    keeps = [tuple(sorted(k)) for k in keeps]
    return Individual(tuple(keeps), tuple(_selection(k, e) for k in keeps), tuple(_selection(k, e) for k in keeps))


class PlanScorer:
    """Loss (or KL to the unpruned model) of expert plans on token windows (no caching): the
    work of one unit, run by :class:`PlanWorker` wherever the executor puts it."""

    def __init__(self, module: torch.nn.Module, windows: torch.Tensor, *, metric: str = "loss", batch: int = 8):
        if metric not in ("loss", "kl"):
            raise GenzipError(f"eep-search: unknown fitness '{metric}'", "use loss or kl")
        self.module, self.windows, self.metric, self.batch = module, windows, metric, batch
        self._ref = None
        if metric == "kl":
            self._ref = [torch.log_softmax(self._logits(c), -1) for c in self._chunks()]

    def _chunks(self):
        return [self.windows[i : i + self.batch] for i in range(0, len(self.windows), self.batch)]

    @torch.no_grad()
    def _logits(self, chunk: torch.Tensor) -> torch.Tensor:
        return self.module(input_ids=chunk).logits[:, :-1].float()

    @torch.no_grad()
    def score(self, plan: _plan.ExpertPlan | None) -> float:
        """Mean per-token loss (``metric=loss``) or KL(unpruned || pruned) (``kl``)."""
        total, count = 0.0, 0
        with moe_experts.applied(self.module, plan or _plan.ExpertPlan({})):
            for j, chunk in enumerate(self._chunks()):
                logits = self._logits(chunk)
                if self.metric == "loss":
                    value = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                              chunk[:, 1:].reshape(-1), reduction="sum")
                else:
                    ref = self._ref[j]
                    value = (ref.exp() * (ref - torch.log_softmax(logits, -1))).sum()
                total, count = total + float(value), count + chunk[:, 1:].numel()
        return total / count


class PlanWorker:
    """One EEP work unit (``genzip.parallel``): the fitness of one plan. A worker holds the
    eager module (rebuilt from a ``ModuleState`` on a remote worker) and the windows."""

    def __init__(self, module, windows: torch.Tensor, metric: str, *, threads: int | None = None):
        if threads:
            torch.set_num_threads(threads)
        if isinstance(module, ModuleState):
            module = module.build(eager_attention=False)  # the driver's kernel: the same losses
        self.scorer = PlanScorer(module, windows, metric=metric)

    def score(self, plan: _plan.ExpertPlan) -> float:
        return self.scorer.score(plan)


class Fitness:
    """Fitness of individuals, cached per plan (an individual is evaluated once). A batch is
    evaluated through an executor's pool: the uncached plans, in order, one unit each."""

    def __init__(self, pool, e: int, k: int):
        self.pool, self.e, self.k = pool, e, k
        self.cache: dict = {}
        self.evals = self.hits = 0

    def is_new(self, ind: Individual, pending: set) -> bool:
        return ind.key() not in self.cache and ind.key() not in pending

    def batch(self, inds: list[Individual]) -> list[float]:
        """Scores of ``inds`` in order; counts evaluations and hits as one-by-one scoring would."""
        todo: dict = {}
        for ind in inds:
            if ind.key() in self.cache or ind.key() in todo:
                self.hits += 1
            else:
                todo[ind.key()] = ind
        values = self.pool.map("score", [ind.plan(self.e, self.k) for ind in todo.values()])
        self.evals += len(todo)
        self.cache.update(zip(todo, values))
        return [self.cache[ind.key()] for ind in inds]


@dataclasses.dataclass
class SearchResult:
    best: Individual
    best_fitness: float
    baseline: Individual
    baseline_fitness: float
    history: list[float]  # best fitness after each generation
    evals: int
    cache_hits: int


def frequency_baseline(freq: np.ndarray, keep: int) -> Individual:
    """Keep each layer's ``keep`` most-routed experts (ties: lower index), no merging."""
    e = freq.shape[1]
    return pruning_only([tuple(np.argsort(-row, kind="stable")[:keep].tolist()) for row in freq], e)


def random_individual(rng: np.random.Generator, layers: int, e: int, keep: int) -> Individual:
    return pruning_only([tuple(rng.choice(e, keep, replace=False).tolist()) for _ in range(layers)], e)


def _crossover(rng, a: Individual, b: Individual) -> Individual:
    pick = rng.random(len(a.keep)) < 0.5
    return Individual(tuple(x if p else y for p, x, y in zip(pick, a.keep, b.keep)),
                      tuple((x if p else y).copy() for p, x, y in zip(pick, a.weights, b.weights)),
                      tuple((x if p else y).copy() for p, x, y in zip(pick, a.routers, b.routers)))


def _mutate(rng, ind: Individual, e: int, merge: bool) -> Individual:
    keep, weights, routers = list(ind.keep), [w.copy() for w in ind.weights], [r.copy() for r in ind.routers]
    layer = int(rng.integers(len(keep)))
    pruned = [x for x in range(e) if x not in keep[layer]]
    if not merge or rng.random() < 0.3:
        out_pos = int(rng.integers(len(keep[layer])))
        new = list(keep[layer])
        new[out_pos] = int(rng.choice(pruned))
        keep[layer] = tuple(sorted(new))
        weights[layer], routers[layer] = _selection(keep[layer], e), _selection(keep[layer], e)
    else:
        # EEP perturbs both matrices: merge weights on pruned experts and self, router mapping likewise.
        for m in (weights[layer], routers[layer]):
            free = np.zeros_like(m, dtype=bool)
            free[:, pruned] = True
            free[np.arange(len(keep[layer])), list(keep[layer])] = True
            m[free] += rng.normal(0.0, _SIGMA, size=int(free.sum()))
    return Individual(tuple(keep), tuple(weights), tuple(routers))


def search(module: torch.nn.Module, fit_windows: torch.Tensor, *, keep: int, population: int = 8,
           generations: int = 10, seed: int = 0, metric: str = "loss", merge: bool = True,
           max_evals: int | None = None, progress: Callable[[str], None] | None = None,
           executor=None) -> SearchResult:
    """EEP's evolutionary search for ``keep`` experts per layer (see the module docstring).
    ``executor`` (``genzip.parallel``): where each batch of new plans is scored, one unit per
    plan; results are identical to the serial path."""
    blocks, e, k = moe_experts.model_shape(module)
    if not k <= keep <= e:
        raise GenzipError(f"eep-search: --keep {keep} is outside [{k}, {e}] (top-{k} routing, {e} experts)",
                          f"keep between {k} and {e} experts per layer")
    if population < 2 or generations < 0:
        raise GenzipError("eep-search: --population must be >= 2 and --generations >= 0")
    budget = max_evals if max_evals is not None else population * (generations + 1)
    rng = np.random.default_rng(seed)
    baseline = frequency_baseline(moe_experts.router_frequencies(module, fit_windows), keep)
    pop = [baseline] + [random_individual(rng, len(blocks), e, keep) for _ in range(population - 1)]
    executor = executor or SerialExecutor()
    shipped = ModuleState.of(module) if executor.distributed else module
    with executor.pool(PlanWorker, shipped, fit_windows, metric) as pool:
        fitness = Fitness(pool, e, k)
        scored = sorted(((f, i, p) for i, (p, f) in enumerate(zip(pop, fitness.batch(pop)))), key=lambda t: t[:2])
        base_fit = fitness.batch([baseline])[0]
        history, tick = [scored[0][0]], population
        for g in range(generations):
            # A generation's children depend only on the previous one, so they are drawn first
            # and scored as one batch (one unit per new plan); the budget counts new plans as
            # they are drawn, exactly as scoring them one by one would.
            children, pending = [], set()
            for _ in range(population):
                if fitness.evals + len(pending) >= budget:
                    break
                a, b = (scored[int(i)][2] for i in rng.integers(0, min(len(scored), max(2, population // 2)), 2))
                child = _mutate(rng, _crossover(rng, a, b), e, merge)
                if fitness.is_new(child, pending):
                    pending.add(child.key())
                tick += 1
                children.append((tick, child))
            values = fitness.batch([c for _, c in children])
            scored = sorted(scored + [(f, t, c) for f, (t, c) in zip(values, children)], key=lambda t: t[:2])
            scored = scored[:population]
            history.append(scored[0][0])
            if progress:
                progress(f"eep-search: generation {g + 1}/{generations}: best {metric} {scored[0][0]:.4f} "
                         f"(baseline {base_fit:.4f}; {fitness.evals} evaluations, {fitness.hits} cached)")
            if fitness.evals >= budget:
                break
    best_fit, _, best = scored[0]
    if not math.isfinite(best_fit):
        raise GenzipError("eep-search: every plan scored a non-finite loss", "check the model and calibration text")
    return SearchResult(best, best_fit, baseline, base_fit, history, fitness.evals, fitness.hits)
