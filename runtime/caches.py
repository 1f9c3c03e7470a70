"""Attention caches of a share-attn artifact, kept per call identity.

A diffusion loop may call the transformer any number of times per step (one
CFG-batched call, or separate unconditional and conditional calls, or a solver's
extra evaluations). Counting calls per module breaks as soon as that number
changes, so caches are keyed by *call identity* instead: a fingerprint of the
call's conditioning (the ``encoder_hidden_states`` or ``class_labels`` bytes and
the batch shape). Two
calls with the same conditioning share a cache slot, which is what AST and WA-RS
mean: the same branch of the same sample, one step earlier.

A *step* is a distinct timestep value: the step counter advances when a call
arrives whose timestep differs from the previous call's (``StepClock``).

Invariant: a slot holds, per layer, the block output of the latest call in that
slot (for share-step) and the residual from the latest ``full`` call that
refreshed it (for WA-RS); nothing else.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np


def call_identity(conditioning: np.ndarray | None, batch_shape: tuple[int, ...]) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(repr(tuple(batch_shape)).encode())
    if conditioning is not None:
        arr = np.ascontiguousarray(conditioning)
        h.update(repr((arr.dtype.str, arr.shape)).encode())
        h.update(arr.tobytes())
    return h.hexdigest()


@dataclasses.dataclass
class Slot:
    block: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)
    residual: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)


class AttentionCaches:
    """Cache slots by call identity (see module docstring)."""

    def __init__(self):
        self.slots: dict[str, Slot] = {}

    def slot(self, identity: str) -> Slot:
        return self.slots.setdefault(identity, Slot())

    def clear(self) -> None:
        self.slots.clear()


class StepClock:
    """Step index from the sequence of timesteps seen (a new value = the next step)."""

    def __init__(self):
        self.step = -1
        self._last: bytes | None = None

    def observe(self, timestep: np.ndarray) -> int:
        key = np.ascontiguousarray(timestep, dtype=np.float64).tobytes()
        if key != self._last:
            self.step += 1
            self._last = key
        return self.step

    def reset(self) -> None:
        self.step, self._last = -1, None
