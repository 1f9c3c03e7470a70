"""DiTFastAttn's greedy plan search over a share-attn artifact.

Along the *compressed* trajectory (latents produced by the plan chosen so far),
at each step t >= 1 and for each layer i = 0..L-1 in order, the candidates
share-step (AST), window-residual+share-cfg (WA-RS+ASC), window-residual
(WA-RS) and full+share-cfg (ASC) are tried in that order, with layers < i at
their chosen methods and layers > i full. The first candidate with

    loss(O_cand, O_full)   <   δ · (i + 1) / L

is kept (else ``full``). O is the transformer's whole output on the CFG pair
batch (all channels), O_full the uncompressed model's output on the same input
latents. Two losses (``LOSSES``):

* ``dfa`` (default), DiTFastAttn's relative error as its reference code computes it:
  ``mean(clip(|(O_full − O) / (max(O_full, O) + 1e-6)|, 0, 10))`` (elementwise max);
* ``rel-l1``: ``||O − O_full||₁ / ||O_full||₁``.

Step 0 is ``full``. δ = 0 therefore gives an all-full plan, and a large δ accepts AST
at every t >= 1.

Cost (bounded, reported as ``calls``): at most ``1 + (S−1)·(4L + 2)`` transformer
calls — per step one reference call, up to 4 candidates per layer, and one call
that commits the chosen methods' caches.

During the search every committed full-attention step (``full`` and ``full+share-cfg``)
refreshes the residual (modes 1 and 6), so a WA-RS candidate always reuses the
residual of the layer's latest full-attention step, which is exactly what the runtime
feeds for the final plan and what DiTFastAttn's reference does.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from genzip.errors import GenzipError
from genzip.runtime import plan as P
from genzip.runtime.caches import Slot
from genzip.runtime.model import PlannedModel
from genzip.runtime.sampler import sample

CANDIDATES = (P.SHARE_STEP, P.WINDOW_CFG, P.WINDOW, P.FULL_CFG)


def relative_l1(candidate: np.ndarray, reference: np.ndarray) -> float:
    denom = float(np.abs(reference).sum())
    return float(np.abs(candidate - reference).sum()) / max(denom, 1e-30)


def dfa_relative_error(candidate: np.ndarray, reference: np.ndarray) -> float:
    ratio = (reference - candidate) / (np.maximum(reference, candidate) + 1e-6)
    return float(np.clip(np.abs(ratio), 0.0, 10.0).mean())


LOSSES = {"dfa": dfa_relative_error, "rel-l1": relative_l1}


@dataclasses.dataclass
class SearchResult:
    plan: P.Plan
    calls: int
    max_calls: int
    losses: list[list[float]]  # [layer][step] loss of the kept method (0 for full)
    latents: np.ndarray


def _search_modes(methods: list[str], refresh: bool) -> list[int]:
    """Modes of a call; committed full-attention steps refresh the residual, trial calls need not."""
    modes = [P.MODE_OF[m] for m in methods]
    return [P.REFRESHING.get(m, m) for m in modes] if refresh else modes


class CandidateWorker:
    """One work unit of the distributed search (``genzip.parallel``): the loss of one call
    with explicit per-layer methods against the step's reference output, reading the
    step's committed caches. A worker holds its own session of the artifact, loaded once."""

    def __init__(self, folder: str, loss: str, *, threads: int | None = None):
        self.model = PlannedModel(folder, threads=threads)
        self.loss_fn = LOSSES[loss]

    def loss(self, methods: tuple[str, ...], state: tuple[dict, Slot, np.ndarray]) -> float:
        feeds, slot, reference = state
        out = self.model.run_modes(feeds, _search_modes(list(methods), False), slot)[self.model.main_output]
        return self.loss_fn(out, reference)


def greedy_search(model: PlannedModel, prompt: np.ndarray, negative: np.ndarray, *, delta: float, steps: int,
                  cfg: float, seed: int = 0, scheduler: str | None = None, loss: str = "dfa",
                  progress=None, scheduler_config: dict | None = None, executor=None) -> SearchResult:
    """``executor`` (``genzip.parallel``): a distributed one evaluates the candidates of one
    (layer, step) on its workers, in waves of ``executor.workers`` in candidate order, and
    keeps the first accepted one, so the plan, losses and latents equal the serial search's;
    ``calls`` then counts the speculative calls too (still within ``max_calls``)."""
    if model.layout is None:
        raise GenzipError(f"artifact {model.folder} was compiled without share-attn, so there is nothing to plan",
                          "compile with --passes 'canonicalize-attn,share-attn'")
    if loss not in LOSSES:
        raise GenzipError(f"unknown loss '{loss}'", f"use one of {', '.join(LOSSES)}")
    loss_fn = LOSSES[loss]
    if delta < 0:
        raise GenzipError(f"--delta {delta} must be >= 0", "pass a threshold like 0.05")
    layers = model.layers
    chosen = [[P.FULL] * steps for _ in range(layers)]
    losses = [[0.0] * steps for _ in range(layers)]
    slot, calls = Slot(), [0]
    model.set_plan(None)
    pool = executor.pool(CandidateWorker, model.folder, loss) if executor and executor.distributed else None

    def run(feeds, methods, refresh=False):
        calls[0] += 1
        return model.run_modes(feeds, _search_modes(methods, refresh), slot)

    def call(feeds, t):
        methods = [chosen[i][t] for i in range(layers)]
        if t > 0:
            reference = model.run_modes(feeds, [P.MODE_FULL] * layers, slot)[model.main_output]
            calls[0] += 1
            state = pool.put((feeds, slot, reference)) if pool else None  # once per step, not per unit
            for i in range(layers):
                bound = delta * (i + 1) / layers
                if pool:
                    methods[i] = _first_accepted(pool, executor.workers, methods, i, state, bound, losses, t, calls)
                    chosen[i][t] = methods[i]
                    continue
                for cand in CANDIDATES:
                    methods[i] = cand
                    value = loss_fn(run(feeds, methods)[model.main_output], reference)
                    if value < bound:
                        losses[i][t] = value
                        break
                else:
                    methods[i] = P.FULL
                chosen[i][t] = methods[i]
        outs = run(feeds, methods, refresh=True)
        model.commit(slot, _search_modes(methods, True), outs)
        if progress:
            progress(t, steps, methods, calls[0])
        return outs[model.main_output]

    # The plan is only valid for the trajectory it was searched on: a trained model's own
    # noise schedule (scheduler_config) must be the one the search samples with.
    try:
        result = sample(model, prompt, negative, steps=steps, cfg=cfg, seed=seed, scheduler=scheduler, call=call,
                        scheduler_config=scheduler_config)
    finally:
        if pool:
            pool.close()
    plan = P.Plan(steps, layers, model.layout.window, tuple(tuple(r) for r in chosen))
    return SearchResult(plan, calls[0], 1 + (steps - 1) * (4 * layers + 2), losses, result.latents)


def _first_accepted(pool, width: int, methods: list[str], i: int, state, bound: float,
                    losses: list[list[float]], t: int, calls: list[int]) -> str:
    """Layer ``i``'s method: candidates in waves of ``width`` (all of a wave run in parallel),
    the first in candidate order whose loss is under ``bound``, else full."""
    for start in range(0, len(CANDIDATES), width):
        wave = CANDIDATES[start:start + width]
        units = [tuple(methods[:i]) + (c,) + tuple(methods[i + 1:]) for c in wave]
        values = pool.map("loss", units, state)
        calls[0] += len(wave)
        for cand, value in zip(wave, values):
            if value < bound:
                losses[i][t] = value
                return cand
    return P.FULL


def attention_flops(plan: P.Plan, full: float, window: float) -> float:
    """Attention FLOPs of running ``plan`` on a CFG pair, per layer ``full``/``window`` FLOPs.

    A full step that refreshes the residual also pays for the window attention.
    """
    per_mode = {P.MODE_FULL: full, P.MODE_FULL_RESIDUAL: full + window, P.MODE_WINDOW: window,
                P.MODE_SHARE_STEP: 0.0, P.MODE_FULL_CFG: full / 2, P.MODE_WINDOW_CFG: window / 2,
                P.MODE_FULL_CFG_RESIDUAL: (full + window) / 2}
    return sum(per_mode[m] for t in range(plan.steps) for m in plan.modes(t))


def plan_flops(model, plan: P.Plan) -> tuple[float, float]:
    """(attention FLOPs of ``plan``, of the all-full plan) on a share-attn artifact,
    from the per-layer full/window FLOPs its share-attn pass recorded."""
    stats = next(r["stats"] for r in model.manifest["pass_stats"] if r["pass"].startswith("share-attn"))
    full, window = stats["attn_flops_full"] / model.layers, stats["attn_flops_window"] / model.layers
    baseline = attention_flops(P.Plan.all_full(plan.steps, plan.layers, plan.window), full, window)
    return attention_flops(plan, full, window), baseline


def flops_saved(model, plan: P.Plan) -> float:
    used, baseline = plan_flops(model, plan)
    return 1.0 - used / baseline if baseline else 0.0


def heatmap(plan: P.Plan, path: str, title: str = "") -> None:
    """Layer x step PNG, one color per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    colors = ["#2b2b2b", "#4c72b0", "#55a868", "#c44e52", "#8172b2", "#dd8452"]
    index = {m: k for k, m in enumerate(P.METHODS)}
    grid = np.array([[index[m] for m in row] for row in plan.methods])
    fig, ax = plt.subplots(figsize=(max(4, plan.steps * 0.35), max(2.5, plan.layers * 0.3)))
    ax.imshow(grid, cmap=ListedColormap(colors), vmin=0, vmax=len(colors) - 1, aspect="auto", interpolation="none")
    ax.set_xticks(range(0, plan.steps, max(1, plan.steps // 10)))
    ax.set_yticks(range(plan.layers))
    ax.set_xlabel("step")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=8)
    ax.legend(handles=[Patch(color=colors[index[m]], label=m) for m in P.METHODS],
              fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
