"""A compiled DiT artifact run step by step under an attention-sharing plan.

``ShareLayout`` is what ``share-attn`` recorded in the manifest (pass stats);
``PlannedModel.call`` runs one transformer call: it feeds ``attn_modes`` for
the step from the plan, the cache slot of the call's identity (``caches``), and
stores what the plan will need later. Without share-attn in the artifact it is a
plain ORT call (and refuses a plan).

Invariant: cache inputs are always fed with the right batch — the cached array
when the mode reads it, an empty ``[0, ...]`` array otherwise — so a call never
reads a stale cache of another batch size.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from genzip.backends.artifact import read_manifest
from genzip.backends.ort_backend import artifact_model_path
from genzip.errors import GenzipError
from genzip.ort_session import make_session
from genzip.providers import resolve_providers
from genzip.runtime import plan as plans
from genzip.runtime.caches import AttentionCaches, Slot, call_identity
from genzip.runtime.conditioning import MASK, with_prompt_mask

SHARE_PASS = "share-attn"


@dataclasses.dataclass(frozen=True)
class ShareLayout:
    modes_input: str
    cfg_order: tuple[str, ...]
    window: int
    layers: tuple[dict[str, Any], ...]

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> ShareLayout | None:
        for record in manifest.get("pass_stats", []):
            if record.get("pass", "").split("{")[0] == SHARE_PASS and record.get("modified"):
                lay = record["stats"]["layout"]
                return cls(lay["modes_input"], tuple(lay["cfg_order"]), int(lay["window"]), tuple(lay["layers"]))
        return None


def _empty(shape: list, dtype=np.float32) -> np.ndarray:
    return np.zeros([0] + [d if isinstance(d, int) else 1 for d in shape[1:]], dtype=dtype)


class PlannedModel:
    """One ORT session of an artifact plus its plan and caches."""

    def __init__(self, artifact: str, plan: plans.Plan | None = None, threads: int | None = None, providers=None,
                 refresh: str = plans.REFRESH_FULL_ATTENTION):
        plans.refreshes(plans.FULL, refresh)  # validates the rule name
        self.refresh = refresh  # residual refresh rule (plans.REFRESH_FULL_ONLY only replays the old rule)
        self.folder = artifact
        self.manifest = read_manifest(artifact)
        self.layout = ShareLayout.from_manifest(self.manifest)
        self.providers = resolve_providers(providers) if providers is not None else None
        self.model_path, _ = artifact_model_path(artifact, self.manifest, self.providers)
        self.session = make_session(self.model_path, threads=threads, providers=self.providers)
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.main_output = self.manifest["outputs"][0]["name"]
        self.inputs = self.manifest["inputs"]
        self.caches = AttentionCaches()
        self.plan: plans.Plan | None = None
        self.set_plan(plan)

    @property
    def layers(self) -> int:
        return len(self.layout.layers) if self.layout else 0

    def set_plan(self, plan: plans.Plan | None) -> None:
        if plan is not None:
            if self.layout is None:
                raise GenzipError(
                    f"artifact {self.folder} was compiled without share-attn, so a plan cannot apply",
                    "recompile with --passes 'canonicalize-attn,share-attn' or drop --plan",
                )
            if plan.layers != self.layers:
                raise GenzipError(
                    f"the plan has {plan.layers} layers but artifact {self.folder} has {self.layers} "
                    f"share-attn layers", "use a plan made for this artifact (genzip plan ARTIFACT)",
                )
        self.plan = plan
        self.caches.clear()

    def check_steps(self, steps: int) -> None:
        if self.plan is not None and self.plan.steps != steps:
            raise GenzipError(
                f"the plan is for {self.plan.steps} steps but {steps} were asked for",
                f"sample with --steps {self.plan.steps} or make a plan for {steps} steps",
            )

    def modes(self, step: int, cfg_pair: bool) -> list[int]:
        modes = self.plan.modes(step, self.refresh) if self.plan is not None else [plans.MODE_FULL] * self.layers
        if not cfg_pair:  # no (uncond, cond) halves in this call: ASC has nothing to share
            swap = {plans.MODE_FULL_CFG: plans.MODE_FULL, plans.MODE_WINDOW_CFG: plans.MODE_WINDOW,
                    plans.MODE_FULL_CFG_RESIDUAL: plans.MODE_FULL_RESIDUAL}
            modes = [swap.get(m, m) for m in modes]
        return modes

    def call(self, feeds: dict[str, np.ndarray], step: int, *, cfg_pair: bool,
             identity: str | None = None) -> np.ndarray:
        """The main output of one transformer call at ``step`` (caches updated)."""
        feeds = with_prompt_mask(feeds, self.inputs)
        if self.layout is None:
            return self.session.run([self.main_output], feeds)[0]
        batch = next(iter(feeds.values())).shape[:1]
        if identity is None:
            cond = feeds.get("encoder_hidden_states")
            identity = call_identity(feeds.get("class_labels") if cond is None else cond, batch)
            mask = feeds.get(MASK)
            if mask is not None and not np.all(mask):  # a padded prompt is another conditioning
                identity += call_identity(mask, batch)
        slot = self.caches.slot(identity)
        modes = self.modes(step, cfg_pair and batch[0] % 2 == 0)
        outs = self.run_modes(feeds, modes, slot, step)
        self.commit(slot, modes, outs)
        return outs[self.main_output]

    def run_modes(self, feeds: dict[str, np.ndarray], modes: list[int], slot: Slot,
                  step: int | str = "?") -> dict[str, np.ndarray]:
        """All outputs of one call with explicit per-layer ``modes``, reading ``slot``; no cache update."""
        run_feeds = with_prompt_mask(feeds, self.inputs)
        run_feeds[self.layout.modes_input] = np.asarray(modes, dtype=np.int64)
        for lay, mode in zip(self.layout.layers, modes):
            i = lay["layer"]
            reads_block = mode == plans.MODE_SHARE_STEP
            reads_res = mode in (plans.MODE_WINDOW, plans.MODE_WINDOW_CFG)
            if reads_block and i not in slot.block or reads_res and i not in slot.residual:
                raise GenzipError(
                    f"layer {i} at step {step} needs a cache no earlier call with this conditioning filled",
                    "start sampling from step 0 (caches are per conditioning and batch)",
                )
            run_feeds[lay["block_in"]] = slot.block[i] if reads_block else _empty(lay["block_shape"])
            run_feeds[lay["residual_in"]] = slot.residual[i] if reads_res else _empty(lay["residual_shape"])
        return dict(zip(self.output_names, self.session.run(self.output_names, run_feeds)))

    def commit(self, slot: Slot, modes: list[int], outs: dict[str, np.ndarray]) -> None:
        """Keep what later steps may read: every block output, and residuals that modes 1 and 6 refreshed."""
        for lay, mode in zip(self.layout.layers, modes):
            i = lay["layer"]
            slot.block[i] = outs[lay["block_out"]]
            if mode in plans.REFRESH_MODES:
                slot.residual[i] = outs[lay["residual_out"]]
