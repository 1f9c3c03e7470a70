"""Expert plans: which experts of each MoE layer stay, and what is merged into them.

A plan file is JSON::

    {"layers": {"0": {"keep": [0, 2], "merge": {"0": {"1": 0.3}, "2": {"2": 0.9, "3": 0.1}}}, ...}}

(``num_experts`` / ``top_k`` may be given too; they are then checked against the model.)
Layers are the MoE layers in graph order (layer ``i`` = the ``i``-th router), and a
layer missing from the plan keeps every expert. Per layer, ``keep`` lists the kept
experts in their new order; ``merge[t][s]`` is EEP's merge matrix entry: kept expert
``t`` becomes ``sum_s M[t, s] * W_s`` (every expert weight tensor alike), where
``M[t, t]`` is 1 unless given and every other entry 0 unless given. So a plan without
``merge`` (or with zero weights) is plain pruning, and keeping every expert in order is
the identity. The router keeps the rows of the kept experts (EEP's router slice; the
softmax after it renormalizes over the kept logits); an optional ``router`` table of the
same form is EEP's router mapping matrix: kept router row ``t`` = ``sum_s R[t, s] g_s``.

Invariant: :func:`load_plan` returns only plans that :func:`check_plan` accepts for the
model's layer count, expert count and top-k; anything else is a one-line GenzipError.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from genzip import jsonfile
from genzip.errors import GenzipError

FIX = 'write {"layers": {"0": {"keep": [...], "merge": {"kept": {"pruned": w}}}}} or run genzip eep-search'


@dataclasses.dataclass(frozen=True)
class LayerPlan:
    keep: tuple[int, ...]
    merge: dict[int, dict[int, float]]  # kept target -> {source expert: weight}
    router: dict[int, dict[int, float]] = dataclasses.field(default_factory=dict)  # the same, for router rows

    def matrix(self, num_experts: int, which: str = "merge") -> np.ndarray:
        """EEP's ``[K, E]`` merge (or router mapping) matrix (rows: kept experts in order)."""
        table = self.merge if which == "merge" else self.router
        m = np.zeros((len(self.keep), num_experts), dtype=np.float64)
        for row, t in enumerate(self.keep):
            m[row, t] = 1.0
            for s, w in table.get(t, {}).items():
                m[row, s] = w
        return m

    def is_identity(self, num_experts: int) -> bool:
        eye = np.eye(num_experts)
        return self.keep == tuple(range(num_experts)) and np.array_equal(self.matrix(num_experts), eye) \
            and np.array_equal(self.matrix(num_experts, "router"), eye)


@dataclasses.dataclass(frozen=True)
class ExpertPlan:
    layers: dict[int, LayerPlan]
    num_experts: int | None = None
    top_k: int | None = None

    def to_json(self) -> dict:
        layers = {}
        for i, lp in sorted(self.layers.items()):
            entry: dict = {"keep": list(lp.keep)}
            merge = {str(t): {str(s): float(w) for s, w in sorted(src.items())} for t, src in sorted(lp.merge.items())
                     if src}
            if merge:
                entry["merge"] = merge
            router = {str(t): {str(s): float(w) for s, w in sorted(src.items())}
                      for t, src in sorted(lp.router.items()) if src}
            if router:
                entry["router"] = router
            layers[str(i)] = entry
        head = {k: v for k, v in (("num_experts", self.num_experts), ("top_k", self.top_k)) if v is not None}
        return {**head, "layers": layers}


def _int(x, what: str, where: str) -> int:
    if isinstance(x, bool) or not (isinstance(x, int) or isinstance(x, str) and x.strip().lstrip("-").isdigit()):
        raise GenzipError(f"{where}: {what} must be an integer, got {x!r}", FIX)
    return int(x)


def _table(entry: dict, key: str, at: str) -> dict[int, dict[int, float]]:
    raw = entry.get(key, {})
    if not isinstance(raw, dict):
        raise GenzipError(f"{at}: {key} must be an object {{kept: {{source: weight}}}}", FIX)
    table: dict[int, dict[int, float]] = {}
    for t, sources in raw.items():
        if not isinstance(sources, dict):
            raise GenzipError(f"{at}: {key}[{t}] must be an object {{source expert: weight}}", FIX)
        row = {}
        for s, w in sources.items():
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
                raise GenzipError(f"{at}: {key} weight {t}<-{s} must be a finite number, got {w!r}", FIX)
            row[_int(s, f"a {key} source", at)] = float(w)
        table[_int(t, f"a {key} target", at)] = row
    return table


def parse_plan(raw, where: str) -> ExpertPlan:
    """The plan in ``raw`` (parsed JSON), shape-checked only (see :func:`check_plan`)."""
    if not isinstance(raw, dict) or not isinstance(raw.get("layers"), dict):
        raise GenzipError(f"{where} must be an object with a 'layers' object", FIX)
    layers = {}
    for key, entry in raw["layers"].items():
        layer = _int(key, "a layer key", where)
        at = f"{where} layer {layer}"
        if not isinstance(entry, dict) or not isinstance(entry.get("keep"), list):
            raise GenzipError(f"{at} must be an object with a 'keep' list", FIX)
        keep = tuple(_int(e, "a kept expert", at) for e in entry["keep"])
        layers[layer] = LayerPlan(keep, _table(entry, "merge", at), _table(entry, "router", at))
    meta = {k: _int(raw[k], k, where) for k in ("num_experts", "top_k") if raw.get(k) is not None}
    return ExpertPlan(layers, **meta)


def check_plan(plan: ExpertPlan, *, layers: int, num_experts: int, top_k: int, where: str) -> None:
    """Refuse (one-line GenzipError) a plan that does not fit a model with ``layers`` MoE
    layers of ``num_experts`` experts routed top-``top_k``."""
    if plan.num_experts is not None and plan.num_experts != num_experts:
        raise GenzipError(f"{where} is for {plan.num_experts} experts but the model has {num_experts}",
                          "use a plan made for this model")
    if plan.top_k is not None and plan.top_k != top_k:
        raise GenzipError(f"{where} is for top-{plan.top_k} routing but the model routes top-{top_k}",
                          "use a plan made for this model")
    for layer, lp in sorted(plan.layers.items()):
        at = f"{where} layer {layer}"
        if not 0 <= layer < layers:
            raise GenzipError(f"{where}: unknown layer {layer} (the model has {layers} MoE layers, 0..{layers - 1})",
                              "use a plan made for this model")
        bad = [e for e in lp.keep if not 0 <= e < num_experts]
        if bad:
            raise GenzipError(f"{at}: expert {bad[0]} is out of range (the model has {num_experts}: "
                              f"0..{num_experts - 1})", "use a plan made for this model")
        if len(set(lp.keep)) != len(lp.keep):
            raise GenzipError(f"{at}: keep lists an expert twice ({list(lp.keep)})", "list each kept expert once")
        if len(lp.keep) < top_k:
            raise GenzipError(f"{at}: keeps {len(lp.keep)} experts, fewer than the top-{top_k} routing needs",
                              f"keep at least {top_k} experts per layer")
        for key, table in (("merge", lp.merge), ("router", lp.router)):
            for t, sources in table.items():
                if t not in lp.keep:
                    what = "out of range" if not 0 <= t < num_experts else "pruned"
                    raise GenzipError(f"{at}: {key} into expert {t}, which is {what} (kept: {list(lp.keep)})",
                                      f"{key} only into kept experts")
                bad = [s for s in sources if not 0 <= s < num_experts]
                if bad:
                    raise GenzipError(f"{at}: {key} source expert {bad[0]} is out of range (0..{num_experts - 1})",
                                      "use a plan made for this model")


def load_plan(path: str) -> ExpertPlan:
    raw = jsonfile.read_json(path, "expert-prune plan", FIX)
    return parse_plan(raw, f"expert-prune plan '{path}'")


def apply_to_stack(stack: np.ndarray, lp: LayerPlan, which: str = "merge") -> np.ndarray:
    """``[E, ...]`` expert weights (``which="router"``: router rows) -> ``[K, ...]``: kept
    experts with the merges (router mapping) applied.

    A row of the matrix that is one-hot is copied, not recomputed, so an identity
    plan reproduces the weights bit for bit."""
    m = lp.matrix(stack.shape[0], which)
    rows = []
    for row, t in zip(m, lp.keep):
        if np.count_nonzero(row) == 1 and row[t] == 1.0:
            rows.append(stack[t])
        else:
            merged = np.tensordot(row, stack.astype(np.float64), axes=(0, 0))
            rows.append(merged.astype(stack.dtype))
    return np.stack(rows)
