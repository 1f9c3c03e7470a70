"""Text generation with a KV-cache LLM artifact (``genzip-compile FOLDER --kv-cache``).

``genzip.load(artifact)`` returns a :class:`CausalLM` for such an artifact (its
manifest has a ``kv_cache`` section). ``generate`` runs one prefill over the prompt
and then one-token decode steps through the same graph, with the cache preallocated
and bound in place (:mod:`genzip.runtime._kv_cache`). Greedy (``do_sample=False``)
is argmax at every step, so in FP32 it reproduces transformers ``generate`` token
for token.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import numpy as np

from genzip.backends.artifact import read_manifest
from genzip.backends.ort_backend import artifact_model_path
from genzip.errors import GenzipError
from genzip.ort_session import make_session
from genzip.providers import resolve_providers
from genzip.runtime._kv_cache import BoundKVCache, session_slots, shares_buffer
from genzip.runtime._sampling import Sampling, next_tokens


@dataclasses.dataclass
class Generation:
    """``sequences``: prompt + new ids ``[batch, total]``; ``text``: the decoded new tokens
    (``None`` without a tokenizer); timings and the cache's peak bytes."""

    sequences: np.ndarray
    new_tokens: int
    text: list[str] | None
    prefill_s: float
    decode_tokens_per_s: float | None
    peak_kv_bytes: int
    kv_bytes: int = 0  # what the cache holds at capacity (peak_kv_bytes counts both ping-pong sides)

    def summary(self) -> dict[str, Any]:
        return {"text": self.text, "tokens": self.sequences.tolist(), "new_tokens": self.new_tokens,
                "prefill_s": self.prefill_s, "decode_tokens_per_s": self.decode_tokens_per_s,
                "peak_kv_bytes": self.peak_kv_bytes, "kv_bytes": self.kv_bytes}


def is_kv_cache_llm(manifest: dict[str, Any]) -> bool:
    return isinstance(manifest.get("kv_cache"), dict)


class CausalLM:
    """A KV-cache LLM artifact on ONNX Runtime: ``generate(...)``, or ``model(**feeds)`` for one step."""

    def __init__(self, folder: str, threads: int | None = None, providers=None):
        self.folder = folder
        self.manifest = read_manifest(folder)
        if not is_kv_cache_llm(self.manifest):
            raise GenzipError(
                f"{folder} is not a KV-cache LLM artifact (its genzip.json has no kv_cache section)",
                "compile a transformers causal-LM folder with genzip-compile FOLDER --kv-cache",
            )
        self.spec = self.manifest["kv_cache"]
        self.providers = resolve_providers(providers) if providers is not None else None
        self.model_path, _ = artifact_model_path(folder, self.manifest, self.providers)
        self.session = make_session(self.model_path, threads=threads, providers=self.providers)
        self.backend = "onnxruntime"
        self._logits = self.session.get_outputs()[0].name
        # fp16 artifacts (--dtype fp16) return fp16 logits; sampling reads them as float32.
        self._logits_dtype = np.float16 if self.session.get_outputs()[0].type == "tensor(float16)" else np.float32
        vocab = self.session.get_outputs()[0].shape[-1]
        self._vocab = vocab if isinstance(vocab, int) else int(self.manifest["kv_cache"]["vocab_size"])
        self.slots = session_slots(self.session)  # float32, or int8 + scales after kv-quant
        self.shared_kv = shares_buffer(self.session)  # ort-gqa: past and present are one buffer
        self._tokenizer = None

    @property
    def tokenizer(self):
        """The transformers tokenizer the artifact carries (``hf/``), or ``None``."""
        hf = os.path.join(self.folder, self.spec.get("hf_dir", "hf"))
        if self._tokenizer is None and os.path.isfile(os.path.join(hf, "tokenizer.json")):
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(hf, local_files_only=True)
        return self._tokenizer

    def __call__(self, **feeds: np.ndarray) -> dict[str, np.ndarray]:
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, feeds)))

    def _ids(self, prompt) -> np.ndarray:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise GenzipError(f"{self.folder} carries no tokenizer, so it cannot encode a text prompt",
                                  "pass input_ids, or compile from a folder with tokenizer.json")
            ids = np.asarray([self.tokenizer(prompt)["input_ids"]], np.int64)
        else:
            ids = np.asarray(prompt)
            ids = ids[None] if ids.ndim == 1 else ids
        if ids.ndim != 2 or ids.shape[1] == 0 or ids.dtype.kind not in "iu":
            raise GenzipError(f"input_ids must be a non-empty [batch, seq] integer array, got {ids.dtype} "
                              f"{list(ids.shape)}", "pass token ids such as [[1, 5, 9]]")
        vocab = self.spec["vocab_size"]
        if ids.min() < 0 or ids.max() >= vocab:
            bad = int(ids.max() if ids.max() >= vocab else ids.min())
            raise GenzipError(f"token id {bad} is outside the vocabulary [0, {vocab})",
                              "pass ids from this model's tokenizer")
        return ids.astype(np.int64)

    def _check_length(self, prompt_len: int, max_new_tokens: int) -> None:
        limit = self.spec.get("max_positions") or 0
        if limit and prompt_len + max_new_tokens > limit:
            raise GenzipError(
                f"a prompt of {prompt_len} tokens plus {max_new_tokens} new tokens exceeds the model's "
                f"{limit} positions", "shorten the prompt or lower max_new_tokens")

    def _eos(self, eos_token_id) -> set[int]:
        eos = self.spec.get("eos_token_id") if eos_token_id is None else eos_token_id
        if eos is None:
            return set()
        return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}

    def new_cache(self, batch: int, capacity: int) -> BoundKVCache:
        """An empty cache of ``capacity`` tokens in the dtypes the graph declares."""
        return BoundKVCache(slots=self.slots, batch=batch, kv_heads=self.spec["kv_heads"], capacity=capacity,
                            shared=self.shared_kv)

    def _step(self, cache: BoundKVCache, ids: np.ndarray, all_positions: bool = False) -> np.ndarray:
        """One graph run over ``ids`` ``[batch, seq]``; returns the last position's logits
        (every position's with ``all_positions``).

        Every input and output is bound by pointer to a buffer that lives as long as the
        cache (one IOBinding per cache, rebound each step), so ORT allocates nothing and
        nothing is converted through an OrtValue: the per-step Python cost stays small
        against the graph's own run time."""
        batch, seq = ids.shape
        total = cache.length + seq
        if cache.io is None:
            cache.io = self.session.io_binding()
            cache.ones = np.ones(batch * cache.capacity, np.int64)  # any prefix is an all-ones mask
            cache.ones_ptr = cache.ones.ctypes.data
        io = cache.io
        logits_size = batch * seq * self._vocab
        if cache.logits is None or cache.logits.size < logits_size:
            cache.logits = np.empty(logits_size, self._logits_dtype)
            cache.logits_ptr = cache.logits.ctypes.data
        ids = np.ascontiguousarray(ids, np.int64)
        positions = np.ascontiguousarray(np.broadcast_to(np.arange(cache.length, total, dtype=np.int64),
                                                         (batch, seq)))
        io.bind_input("input_ids", "cpu", 0, np.int64, [batch, seq], ids.ctypes.data)
        io.bind_input("attention_mask", "cpu", 0, np.int64, [batch, total], cache.ones_ptr)
        io.bind_input("position_ids", "cpu", 0, np.int64, [batch, seq], positions.ctypes.data)
        io.bind_output(self._logits, "cpu", 0, self._logits_dtype, [batch, seq, self._vocab], cache.logits_ptr)
        cache.bind(io, seq)
        self.session.run_with_iobinding(io)
        cache.advance(seq)
        logits = cache.logits[:logits_size].reshape(batch, seq, self._vocab)
        logits = logits if all_positions else logits[:, -1]  # views, valid until the next step
        return logits if logits.dtype == np.float32 else logits.astype(np.float32)

    def score(self, ids, chunk: int = 1) -> np.ndarray:
        """Teacher-forced logits ``[batch, seq, vocab]`` of ``ids`` fed through the cache
        ``chunk`` tokens per graph run (``chunk=1``: every position is a decode step, so
        a quantized or evicting cache is measured as generation would use it)."""
        ids = self._ids(ids)
        batch, seq = ids.shape
        self._check_length(seq, 0)
        cache = self.new_cache(batch, seq)
        step = max(1, int(chunk))
        return np.concatenate([self._step(cache, ids[:, i:i + step], all_positions=True).copy()
                               for i in range(0, seq, step)], axis=1)

    def generate(self, prompt, max_new_tokens: int = 32, do_sample: bool = False, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, eos_token_id=None, seed: int = 0,
                 prefill_chunk: int | None = None) -> Generation:
        """Continue ``prompt`` (text, or ids ``[seq]`` / ``[batch, seq]``) by up to ``max_new_tokens``.

        ``prefill_chunk`` feeds a long prompt through the cache that many tokens per graph
        run (same result; the attention scores of one run stay ``chunk x total`` in size).

        ``eos_token_id`` (int or list; default: the model's generation config) stops a
        sequence; finished sequences are padded with their EOS until all are done.
        """
        sampling = Sampling(do_sample, temperature, top_k, top_p)
        sampling.check()
        if max_new_tokens < 1:
            raise GenzipError(f"max_new_tokens {max_new_tokens} must be >= 1", "pass 1 or more")
        ids = self._ids(prompt)
        batch, prompt_len = ids.shape
        self._check_length(prompt_len, max_new_tokens)
        eos = self._eos(eos_token_id)
        rng = np.random.default_rng(seed)
        cache = self.new_cache(batch, prompt_len + max_new_tokens)
        if prefill_chunk is not None and prefill_chunk < 1:
            raise GenzipError(f"prefill_chunk {prefill_chunk} must be >= 1", "pass 1 or more, or None")
        step = prefill_chunk or prompt_len
        start = time.perf_counter()
        for i in range(0, prompt_len, step):
            logits = self._step(cache, ids[:, i:i + step])
        prefill_s = time.perf_counter() - start
        out, done = [ids], np.zeros(batch, bool)
        decode_start = time.perf_counter()
        for i in range(max_new_tokens):
            token = next_tokens(logits, sampling, rng)
            if eos:
                token = np.where(done, min(eos), token)
                done |= np.isin(token, list(eos))
            out.append(token[:, None])
            if done.all() or i == max_new_tokens - 1:
                break
            logits = self._step(cache, token[:, None])
        decode_s = time.perf_counter() - decode_start
        sequences = np.concatenate(out, axis=1)
        new = sequences.shape[1] - prompt_len
        steps = new - 1  # the first new token comes from the prefill
        text = None
        if self.tokenizer is not None:
            text = [self.tokenizer.decode(row[prompt_len:].tolist(), skip_special_tokens=True) for row in sequences]
        return Generation(sequences, new, text, round(prefill_s, 6),
                          round(steps * batch / decode_s, 2) if steps and decode_s > 0 else None, cache.peak_bytes,
                          cache.bytes)
