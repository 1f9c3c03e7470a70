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
capacity * head_dim * 4`` bytes (``peak_bytes``).
"""

from __future__ import annotations

import numpy as np


class BoundKVCache:
    """``layers`` key/value pairs of capacity ``capacity`` tokens; ``length`` tokens filled."""

    def __init__(self, *, layers: int, batch: int, kv_heads: int, head_dim: int, capacity: int,
                 past_names: list[str], present_names: list[str]):
        self.shape = (batch, kv_heads, head_dim)
        self.capacity = capacity
        self.length = 0
        self.past_names, self.present_names = past_names, present_names
        size = batch * kv_heads * capacity * head_dim
        # _bufs[side][j]: side 0/1 of the ping-pong, j over (layer, key|value).
        self._bufs = [[np.zeros(size, np.float32) for _ in range(2 * layers)] for _ in range(2)]
        self._side = 0  # the side holding the current past

    @property
    def peak_bytes(self) -> int:
        return sum(b.nbytes for side in self._bufs for b in side)

    def _dims(self, tokens: int) -> list[int]:
        b, h, d = self.shape
        return [b, h, tokens, d]

    def bind(self, io, seq: int) -> None:
        """Bind ``past`` (``length`` tokens) and ``present`` (``length + seq``) for one step."""
        if self.length + seq > self.capacity:
            raise ValueError(f"KV cache of capacity {self.capacity} cannot take {self.length + seq} tokens")
        past, present = self._bufs[self._side], self._bufs[1 - self._side]
        for name, buf in zip(self.past_names, past):
            io.bind_input(name, "cpu", 0, np.float32, self._dims(self.length), buf.ctypes.data)
        for name, buf in zip(self.present_names, present):
            io.bind_output(name, "cpu", 0, np.float32, self._dims(self.length + seq), buf.ctypes.data)

    def advance(self, seq: int) -> None:
        """After the run: the present side becomes the past."""
        self._side = 1 - self._side
        self.length += seq

    def layer(self, j: int) -> np.ndarray:
        """A view of key/value ``j`` (``2 * layer + (0 key | 1 value)``) as filled so far."""
        n = int(np.prod(self._dims(self.length)))
        return self._bufs[self._side][j][:n].reshape(self._dims(self.length))
