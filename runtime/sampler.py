"""Classifier-free-guided sampling of a compiled DiT artifact through a diffusers scheduler.

Each step makes one transformer call on the CFG pair batch ``[uncond…, cond…]``
(the order share-attn's ASC assumes, see ``ShareLayout.cfg_order``), applies the
guidance ``uncond + cfg·(cond − uncond)`` and lets the scheduler step. With a
learned-sigma output (``out_channels == 2·in_channels``, PixArt) only the first
half of the channels is the noise prediction. Works for any batch of images.

Invariant: with the same artifact, seed, conditioning, scheduler and step count,
the result depends only on the plan (an all-full plan, or none, gives the same
latents as the artifact without share-attn).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from genzip.errors import GenzipError
from genzip.runtime.model import PlannedModel

SCHEDULERS = ("dpm", "flow-euler")


def make_scheduler(name: str):
    import diffusers

    if name == "dpm":
        return diffusers.DPMSolverMultistepScheduler()
    if name == "flow-euler":
        return diffusers.FlowMatchEulerDiscreteScheduler()
    raise GenzipError(f"unknown scheduler '{name}'", f"use one of {', '.join(SCHEDULERS)}")


@dataclasses.dataclass
class SampleResult:
    latents: np.ndarray
    step_ms: list[float]
    total_ms: float


def _input_spec(model: PlannedModel, name: str) -> dict:
    spec = next((s for s in model.inputs if s["name"] == name), None)
    if spec is None:
        raise GenzipError(
            f"artifact {model.folder} has no '{name}' input, so it is not a text-conditioned DiT",
            "sample a DiT artifact (e.g. genzip-compile tiny-pixart)",
        )
    return spec


def default_conditioning(model: PlannedModel, batch: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random (prompt_embeds, negative_prompt_embeds) of the artifact's text shape."""
    spec = _input_spec(model, "encoder_hidden_states")
    tokens, dim = spec["shape"][1], spec["shape"][2]
    rng = np.random.default_rng(seed + 1)
    cond = rng.standard_normal((batch, tokens, dim)).astype(np.float32)
    uncond = np.zeros_like(cond)
    return cond, uncond


def sample(
    model: PlannedModel,
    prompt_embeds: np.ndarray,
    negative_prompt_embeds: np.ndarray,
    *,
    steps: int,
    cfg: float,
    seed: int = 0,
    scheduler: str = "dpm",
    progress=None,
    call=None,
) -> SampleResult:
    """Latents ``[batch, C, H, W]`` after ``steps`` guided steps (rules in the module docstring).

    ``call(feeds, step) -> output`` replaces the plan-driven transformer call (the plan
    search decides each step's modes itself).
    """
    import torch

    if steps < 1:
        raise GenzipError(f"--steps {steps} must be >= 1", "pass a positive step count")
    if prompt_embeds.shape != negative_prompt_embeds.shape:
        raise GenzipError("prompt and negative prompt embeddings differ in shape", "give both the same shape")
    if call is None:
        model.check_steps(steps)
    spec = _input_spec(model, "hidden_states")
    channels, height, width = spec["shape"][1:]
    out_channels = model.manifest["outputs"][0]["shape"][1]
    batch = prompt_embeds.shape[0]
    sched = make_scheduler(scheduler)
    sched.set_timesteps(steps)
    gen = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, channels, height, width, generator=gen) * getattr(sched, "init_noise_sigma", 1.0)
    text = np.concatenate([negative_prompt_embeds, prompt_embeds]).astype(np.float32)
    model.caches.clear()
    step_ms = []
    start = time.perf_counter()
    for i, t in enumerate(sched.timesteps):
        t0 = time.perf_counter()
        pair = torch.cat([latents, latents])
        if hasattr(sched, "scale_model_input"):
            pair = sched.scale_model_input(pair, t)
        feeds = {
            "hidden_states": pair.numpy().astype(np.float32),
            "timestep": np.full((2 * batch,), float(t), dtype=np.float32),
            "encoder_hidden_states": text,
        }
        if call is None:
            out = model.call(feeds, i, cfg_pair=True, identity="sampler")
        else:
            out = call(feeds, i)
        if out_channels == 2 * channels:
            out = out[:, :channels]
        uncond, cond = np.split(out, 2)
        guided = torch.from_numpy(uncond + cfg * (cond - uncond))
        latents = sched.step(guided, t, latents, return_dict=False)[0]
        step_ms.append((time.perf_counter() - t0) * 1e3)
        if progress:
            progress(i, steps)
    total = (time.perf_counter() - start) * 1e3
    return SampleResult(latents.numpy().astype(np.float32), step_ms, total)
