"""Attention-sharing plans (DiTFastAttn): which method each layer uses at each step.

Schema (JSON, version 1)::

    {"schema": 1, "steps": S, "layers": L, "window": w,
     "methods": [[method of step 0, ..., method of step S-1] for each of L layers]}

A list of per-layer lists of DiTFastAttn reference method names (``full_attn``,
``output_share``, ``residual_window_attn``, ``full_attn+cfg_attn_share``,
``residual_window_attn+cfg_attn_share``; its ``blocks_methods``, written as JSON) loads
as the same plan (``from_reference``).

Methods: ``full``, ``window-residual`` (WA-RS), ``share-step`` (AST),
``share-cfg`` (ASC: full attention on the conditional half, reused for the
unconditional half; same as ``full+share-cfg``), ``window-residual+share-cfg``,
``full+share-cfg``.

Invariant of a ``Plan`` (checked by ``validate`` on construction and load):
step 0 is ``full`` in every layer, and every ``window-residual*`` step of a
layer comes after a step of that layer that computes full attention (``full``,
``full+share-cfg``/``share-cfg``): those produce the residual (``full - window``)
it reuses. As in DiTFastAttn's reference, a WA-RS step reuses the residual of
the layer's latest full-attention step, ASC or not (an ASC step's residual is
its conditional half's, copied to both halves). ``window`` is the window in tokens the
plan was made for (informational; the artifact's window is what runs).

Refresh rule (``Plan.modes(step, refresh=...)``, a replay option, not part of the file):
``REFRESH_FULL_ATTENTION`` (the default, the reference's) refreshes on every
full-attention step; ``REFRESH_FULL_ONLY`` is genzip's rule before issue 16 (only
``full`` refreshes, so a WA-RS step after a ``full+share-cfg`` step reuses the residual
of the latest plain ``full`` step), kept only so a benchmark can replay a plan both ways.
"""

from __future__ import annotations

import dataclasses
import json

from genzip import jsonfile
from genzip.errors import GenzipError
from genzip.metadata import (  # noqa: F401 - the mode numbers are part of this module's API
    MODE_FULL,
    MODE_FULL_CFG,
    MODE_FULL_CFG_RESIDUAL,
    MODE_FULL_RESIDUAL,
    MODE_SHARE_STEP,
    MODE_WINDOW,
    MODE_WINDOW_CFG,
)

SCHEMA = 1
FULL, WINDOW, SHARE_STEP = "full", "window-residual", "share-step"
SHARE_CFG, WINDOW_CFG, FULL_CFG = "share-cfg", "window-residual+share-cfg", "full+share-cfg"
METHODS = (FULL, WINDOW, SHARE_STEP, SHARE_CFG, WINDOW_CFG, FULL_CFG)

# Integer mode per layer fed to a share-attn artifact's ``attn_modes`` input (see
# passes/attention/share_attn.py). FULL_RESIDUAL / FULL_CFG_RESIDUAL are ``full`` /
# ``full+share-cfg`` that also refresh the residual cache; the runtime picks them only when
# a later WA-RS step of the layer needs it.
MODE_OF = {FULL: MODE_FULL, WINDOW: MODE_WINDOW, SHARE_STEP: MODE_SHARE_STEP,
           SHARE_CFG: MODE_FULL_CFG, FULL_CFG: MODE_FULL_CFG, WINDOW_CFG: MODE_WINDOW_CFG}
REFRESHING = {MODE_FULL: MODE_FULL_RESIDUAL, MODE_FULL_CFG: MODE_FULL_CFG_RESIDUAL}
REFRESH_MODES = frozenset(REFRESHING.values())

# Which steps refresh the WA-RS residual: every full-attention step (DiTFastAttn's
# reference; the default) or, as genzip did before issue 16, only plain ``full`` steps.
REFRESH_FULL_ATTENTION, REFRESH_FULL_ONLY = "full-attention", "full-only"
REFRESH_RULES = (REFRESH_FULL_ATTENTION, REFRESH_FULL_ONLY)

# One- or two-letter codes for progress lines.
SHORT = {FULL: "F", WINDOW: "W", SHARE_STEP: "S", SHARE_CFG: "C", FULL_CFG: "C", WINDOW_CFG: "WC"}


def uses_residual(method: str) -> bool:
    return method in (WINDOW, WINDOW_CFG)


def computes_full(method: str) -> bool:
    """Methods that compute full attention, so can refresh the WA-RS residual."""
    return method in (FULL, FULL_CFG, SHARE_CFG)


def refreshes(method: str, refresh: str = REFRESH_FULL_ATTENTION) -> bool:
    """Whether a step of ``method`` refreshes the residual under the rule ``refresh``."""
    if refresh not in REFRESH_RULES:
        raise GenzipError(f"unknown residual refresh rule {refresh!r}", f"use one of: {', '.join(REFRESH_RULES)}")
    return method == FULL if refresh == REFRESH_FULL_ONLY else computes_full(method)


@dataclasses.dataclass(frozen=True)
class Plan:
    steps: int
    layers: int
    window: int
    methods: tuple[tuple[str, ...], ...]  # [layer][step]

    def __post_init__(self):
        validate(self)

    @classmethod
    def all_full(cls, steps: int, layers: int, window: int = 0) -> Plan:
        return cls(steps, layers, window, tuple((FULL,) * steps for _ in range(layers)))

    def method(self, layer: int, step: int) -> str:
        if not 0 <= step < self.steps:
            raise GenzipError(
                f"step {step} is beyond the plan's {self.steps} steps",
                f"sample with --steps {self.steps} or make a plan for more steps (genzip plan --steps N)",
            )
        return self.methods[layer][step]

    def modes(self, step: int, refresh: str = REFRESH_FULL_ATTENTION) -> list[int]:
        """The ``attn_modes`` vector of one step (one int per layer) under the refresh rule ``refresh``."""
        out = []
        for layer in range(self.layers):
            method = self.method(layer, step)
            mode = MODE_OF[method]
            if refreshes(method, refresh) and self._residual_needed(layer, step, refresh):
                mode = REFRESHING[mode]
            out.append(mode)
        return out

    def _residual_needed(self, layer: int, step: int, refresh: str) -> bool:
        """Whether a WA-RS step of ``layer`` after ``step`` reads the residual made here."""
        for later in self.methods[layer][step + 1:]:
            if refreshes(later, refresh):
                return False
            if uses_residual(later):
                return True
        return False

    def to_json(self) -> dict:
        return {"schema": SCHEMA, "steps": self.steps, "layers": self.layers, "window": self.window,
                "methods": [list(row) for row in self.methods]}

    def save(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(self.to_json(), f, indent=1)
            f.write("\n")

    def counts(self) -> dict[str, int]:
        found = {m: 0 for m in METHODS}
        for row in self.methods:
            for m in row:
                found[m] += 1
        return found


def _bad(problem: str) -> GenzipError:
    return GenzipError(f"invalid plan: {problem}", "fix the plan file or regenerate it with `genzip plan`")


def validate(plan: Plan) -> None:
    for name in ("steps", "layers", "window"):
        value = getattr(plan, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < (1 if name != "window" else 0):
            raise _bad(f"'{name}' must be an integer >= {1 if name != 'window' else 0}, got {value!r}")
    if len(plan.methods) != plan.layers:
        raise _bad(f"'methods' has {len(plan.methods)} layer rows but 'layers' is {plan.layers}")
    for layer, row in enumerate(plan.methods):
        if len(row) != plan.steps:
            raise _bad(f"layer {layer} has {len(row)} steps but 'steps' is {plan.steps}")
        have_residual = False
        for step, method in enumerate(row):
            if method not in METHODS:
                raise _bad(f"layer {layer} step {step}: unknown method {method!r} (methods: {', '.join(METHODS)})")
            if step == 0 and method != FULL:
                raise _bad(f"layer {layer} step 0 is '{method}' but step 0 must be 'full'")
            if uses_residual(method) and not have_residual:
                raise _bad(f"layer {layer} step {step} is '{method}' but no earlier 'full' step of that "
                           f"layer produced the residual it needs")
            have_residual |= computes_full(method)


# DiTFastAttn's reference code (thu-nics/DiTFastAttn) names methods per block and step.
REFERENCE_NAMES = {"full_attn": FULL, "output_share": SHARE_STEP, "residual_window_attn": WINDOW,
                   "full_attn+cfg_attn_share": FULL_CFG, "residual_window_attn+cfg_attn_share": WINDOW_CFG}


def from_reference(methods: object, where: str = "plan") -> Plan:
    """A plan in the reference repo's form: a list per transformer block of per-step method names."""
    if not isinstance(methods, list) or not methods or not all(isinstance(r, list) and r for r in methods):
        raise _bad(f"{where}: a reference-format plan is a non-empty list of per-block method lists")
    for row in methods:
        for name in row:
            if name not in REFERENCE_NAMES:
                raise _bad(f"{where}: reference method {name!r} has no genzip equivalent "
                           f"(known: {', '.join(REFERENCE_NAMES)})")
    rows = tuple(tuple(REFERENCE_NAMES[m] for m in row) for row in methods)
    return Plan(len(rows[0]), len(rows), 0, rows)


def from_json(data: object, where: str = "plan") -> Plan:
    if isinstance(data, list):
        return from_reference(data, where)
    if not isinstance(data, dict):
        raise _bad(f"{where} is not a JSON object")
    if data.get("schema") != SCHEMA:
        raise _bad(f"{where} has schema {data.get('schema')!r}; this genzip reads schema {SCHEMA}")
    missing = [k for k in ("steps", "layers", "window", "methods") if k not in data]
    if missing:
        raise _bad(f"{where} lacks '{missing[0]}'")
    methods = data["methods"]
    if not isinstance(methods, list) or not all(isinstance(r, list) for r in methods):
        raise _bad(f"{where}: 'methods' must be a list of per-layer lists")
    return Plan(data["steps"], data["layers"], data["window"], tuple(tuple(r) for r in methods))


def load_plan(path: str) -> Plan:
    return from_json(jsonfile.read_json(path, "plan file", "pass a plan written by `genzip plan`"), where=path)
