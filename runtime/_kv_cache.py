"""A preallocated KV cache bound to an ORT session with IOBinding.

How it is bound, and what is copied. The graph (``genzip-compile --kv-cache``)
computes each layer's ``present = Concat(past, new)``: ONNX Runtime cannot make a
graph output alias a graph input (only the contrib ``GroupQueryAttention`` op has a
shared past/present buffer), and ``Concat`` writes ``[batch, heads, total, dim]``
with a different row stride than it reads ``[batch, heads, past, dim]``, so writing
``present`` over ``past`` in one buffer would corrupt it. So every layer's key and
value get two flat buffers of ``batch * kv_heads * capacity * head_dim`` floats,
allocated once per ``generate`` call (capacity = prompt + new tokens), used
ping-pong: a step binds ``past`` to a prefix of buffer A (``bind_input`` with A's
pointer and shape ``[b, h, past, d]``) and ``present`` to a prefix of buffer B
(``bind_output`` with B's pointer and shape ``[b, h, past + seq, d]``); ORT writes
``present`` straight into B, and the next step swaps A and B.

Per decode step the only cache copy is the one the graph itself makes (``Concat``
reads the past once and writes it once, into the bound buffer): no allocation, no
copy to or from NumPy, no feed conversion. ``session.run`` instead allocates a new
``present`` per layer per step and hands it back through NumPy. Peak cache memory
is fixed up front: ``2 (ping-pong) * 2 (K, V) * layers * batch * kv_heads *
capacity * head_dim * 4`` bytes (``peak_bytes``) for a float32 cache.

Dtypes come from the graph: every cache input ``past_key_values.X`` is paired with
the output ``present.X`` and bound with the element type and last dimension the
session declares, so an int8 cache (``kv-quant``: int8 rows plus a float32 scale per
head and token, ``*_scale`` with last dim 1) gets int8 and float32 buffers. ``bytes``
is one side of the ping-pong (what the cache holds); ``peak_bytes`` both sides.

An evicting cache (``span-attn`` on a KV-cache graph) declares in the model metadata
(``genzip.kv_capacity``: ``{past input: C}``) that its ``present`` keeps at most ``C``
tokens: that slot's buffers hold ``min(capacity, C)`` tokens and it is bound with
``min(length, C)`` past and ``min(length + seq, C)`` present tokens, while ``length``
(what ``attention_mask`` spans) keeps counting every token seen. A slot's head count is
the one its input declares (``span-attn{evict=head}`` gives every KV head its own
tensor of 1 head and its own ``C``), else the model's ``kv_heads``.
A ``cskv`` cache (low-rank features plus a window of recent full-precision rows) keeps
its window in ``past_key_values.*_window`` slots, which hold ``min(tokens, window)``
tokens (the window comes from the model's ``CSKV_KEY`` metadata); every other slot
holds every token.

A shared cache (``ort-gqa``: ``com.microsoft.GroupQueryAttention``, model metadata
``genzip.kv_shared_buffer``) needs no ping-pong: the op writes the new tokens into
``present`` at rows ``[length, length + seq)`` and leaves the rest, so each slot gets
one buffer of ``capacity`` tokens, bound as both ``past`` and ``present`` with shape
``[batch, kv_heads, capacity, last_dim]`` every step (``attention_mask`` tells the op how
many rows are filled). A decode step copies nothing; ``peak_bytes == bytes``.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from genzip.metadata import CSKV_KEY, KV_CAPACITY_KEY, KV_SHARED_KEY

_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
               "tensor(float16)": np.float16}
PAST_PREFIX, PRESENT_PREFIX = "past_key_values.", "present."


@dataclasses.dataclass(frozen=True)
class Slot:
    """One cache tensor: ``past`` input, ``present`` output, element type, last dimension."""

    past: str
    present: str
    dtype: type
    last_dim: int
    keep: int | None = None  # holds at most this many (the latest) tokens: an evicting cache or a cskv window
    heads: int | None = None  # KV heads of this tensor when the graph declares them (1: span-attn's per-head cache)

    def tokens(self, length: int) -> int:
        """Tokens this slot stores after ``length`` have been seen."""
        return length if self.keep is None else min(length, self.keep)


def _kept(session) -> dict[str, int]:
    """``{past input: most tokens held}``: span-attn's evicting cache and cskv's window slots."""
    meta = session.get_modelmeta().custom_metadata_map
    raw = meta.get(KV_CAPACITY_KEY)
    kept = {str(k): int(v) for k, v in json.loads(raw).items()} if raw else {}
    cskv = json.loads(meta.get(CSKV_KEY) or "{}")
    for slot in cskv.get("slots", {}).values():
        if slot.get("window_input"):
            kept[slot["window_input"]] = int(cskv["window"])
    return kept


def shares_buffer(session) -> bool:
    """Whether the graph updates its cache in place (``ort-gqa``): past and present bind one buffer."""
    return KV_SHARED_KEY in session.get_modelmeta().custom_metadata_map


def session_slots(session) -> list[Slot]:
    """Every ``past_key_values.X`` input of ``session`` with its ``present.X`` output."""
    outputs = {o.name for o in session.get_outputs()}
    keep = _kept(session)
    slots = []
    for value in session.get_inputs():
        if not value.name.startswith(PAST_PREFIX):
            continue
        present = PRESENT_PREFIX + value.name[len(PAST_PREFIX):]
        if present not in outputs or value.type not in _ORT_DTYPES or not isinstance(value.shape[-1], int):
            raise ValueError(f"cache input {value.name} ({value.type}, {value.shape}) has no matching "
                             f"{present} output of a known dtype and fixed last dimension")
        heads = value.shape[1] if len(value.shape) == 4 and isinstance(value.shape[1], int) else None
        slots.append(Slot(value.name, present, _ORT_DTYPES[value.type], int(value.shape[-1]), keep.get(value.name),
                          heads))
    return slots


class BoundKVCache:
    """``slots`` cache tensors of capacity ``capacity`` tokens; ``length`` tokens filled."""

    def __init__(self, *, slots: list[Slot], batch: int, kv_heads: int, capacity: int, shared: bool = False):
        self.slots = slots
        self.batch, self.kv_heads = batch, kv_heads
        self.capacity = capacity
        self.length = 0
        self.shared = shared  # one buffer bound as past and present (ort-gqa), no ping-pong
        # _bufs[side][j]: side 0/1 of the ping-pong (only side 0 when shared), j over the slots.
        self._bufs = [[np.zeros(int(np.prod(self._dims(s, capacity))), s.dtype) for s in slots]
                      for _ in range(1 if shared else 2)]
        # Pointers taken once: numpy's .ctypes costs microseconds per call, every step.
        self._ptrs = [[b.ctypes.data for b in side] for side in self._bufs]
        self._side = 0  # the side holding the current past
        self._bound_io = None  # the IOBinding a shared cache is bound to (bound once)
        # The step's IOBinding and its all-ones mask / logits buffers (genzip.runtime.generate).
        self.io = None
        self.ones: np.ndarray | None = None
        self.logits: np.ndarray | None = None

    @property
    def bytes(self) -> int:
        """What the cache holds at capacity (one side of the ping-pong)."""
        return sum(b.nbytes for b in self._bufs[0])

    @property
    def peak_bytes(self) -> int:
        return sum(b.nbytes for side in self._bufs for b in side)

    def _dims(self, slot: Slot, tokens: int) -> list[int]:
        return [self.batch, slot.heads or self.kv_heads, slot.tokens(tokens), slot.last_dim]

    def bind(self, io, seq: int) -> None:
        """Bind ``past`` (``length`` tokens) and ``present`` (``length + seq``) for one step."""
        if self.length + seq > self.capacity:
            raise ValueError(f"KV cache of capacity {self.capacity} cannot take {self.length + seq} tokens")
        if self.shared:
            if self._bound_io is io:  # same buffers and shapes every step: an IOBinding keeps them
                return
            self._bound_io = io
            for slot, ptr in zip(self.slots, self._ptrs[0]):
                dims = self._dims(slot, self.capacity)
                io.bind_input(slot.past, "cpu", 0, slot.dtype, dims, ptr)
                io.bind_output(slot.present, "cpu", 0, slot.dtype, dims, ptr)
            return
        past, present = self._ptrs[self._side], self._ptrs[1 - self._side]
        for slot, ptr in zip(self.slots, past):
            io.bind_input(slot.past, "cpu", 0, slot.dtype, self._dims(slot, self.length), ptr)
        for slot, ptr in zip(self.slots, present):
            io.bind_output(slot.present, "cpu", 0, slot.dtype, self._dims(slot, self.length + seq), ptr)

    def advance(self, seq: int) -> None:
        """After the run: the present side becomes the past (a shared buffer stays put)."""
        self._side = self._side if self.shared else 1 - self._side
        self.length += seq

    def layer(self, j: int) -> np.ndarray:
        """A view of slot ``j`` as filled so far."""
        dims = self._dims(self.slots[j], self.length)
        if self.shared:  # rows [0, length) of each head's capacity-long block
            full = self._dims(self.slots[j], self.capacity)
            return self._bufs[0][j].reshape(full)[:, :, : dims[2]]
        return self._bufs[self._side][j][: int(np.prod(dims))].reshape(dims)
