"""Classifier-free-guided sampling of a compiled DiT artifact through a diffusers scheduler.

Each step makes one transformer call on the CFG pair batch ``[uncond…, cond…]``
(the order share-attn's ASC assumes, see ``ShareLayout.cfg_order``); the pair is
prompt embeddings or class labels, whichever input the artifact has
(``conditioning``: the null class is the unconditional label), applies the
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

from genzip.backends.runner import np_dtype, traced_shape
from genzip.errors import GenzipError
from genzip.runtime import conditioning
from genzip.runtime.model import PlannedModel

SCHEDULERS = ("dpm", "flow-euler")
_CLASSES = {"dpm": "DPMSolverMultistepScheduler", "flow-euler": "FlowMatchEulerDiscreteScheduler"}


def make_scheduler(name: str, config: dict | None = None):
    """A fresh scheduler; ``config`` (e.g. a trained model's ``beta_schedule``) overrides its defaults."""
    import diffusers

    if name not in _CLASSES:
        raise GenzipError(f"unknown scheduler '{name}'", f"use one of {', '.join(SCHEDULERS)}")
    return getattr(diffusers, _CLASSES[name])(**(config or {}))


def scheduler_class(name: str):
    """The diffusers scheduler class ``--scheduler NAME`` stands for."""
    import diffusers

    if name not in _CLASSES:
        raise GenzipError(f"unknown scheduler '{name}'", f"use one of {', '.join(SCHEDULERS)}")
    return getattr(diffusers, _CLASSES[name])


def artifact_scheduler_config(model) -> dict | None:
    """The scheduler config an artifact compiled from a diffusers pipeline folder ships
    (``source_info.scheduler_config``, a copy of the pipeline's ``scheduler_config.json``), or None."""
    import os

    from genzip import jsonfile

    rel = (model.manifest.get("source_info") or {}).get("scheduler_config")
    if not rel:
        return None
    path = os.path.join(model.folder, rel)
    if not os.path.isfile(path):
        raise GenzipError(f"{model.folder} lacks {rel}, which its manifest names", "recompile the artifact")
    config = jsonfile.read_json(path, "scheduler config", "recompile the artifact")
    if not isinstance(config, dict):
        raise GenzipError(f"{path} is not a scheduler config (a JSON object)", "recompile the artifact")
    return config


def scheduler_for(model, name: str | None = None, config: dict | None = None):
    """(a fresh scheduler, what it is) for sampling ``model``.

    ``config`` given (a trained preset's noise schedule): ``name`` (default dpm) built with it.
    Else the artifact's own ``scheduler_config.json`` when it has one: its class, or
    ``name``'s class on its noise schedule (``from_config``, as diffusers swaps schedulers);
    else ``name`` (default dpm) with diffusers' defaults.
    """
    import diffusers

    if config is not None:
        return make_scheduler(name or "dpm", config), f"{name or 'dpm'} (the preset's training schedule)"
    own = artifact_scheduler_config(model)
    if own is None:
        sched = make_scheduler(name or "dpm")
        return sched, f"{type(sched).__name__} (diffusers defaults: the artifact has no scheduler config)"
    if name is not None:
        cls = scheduler_class(name)
    else:
        cls = getattr(diffusers, str(own.get("_class_name")), None)
        if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
            raise GenzipError(f"the artifact's scheduler config names '{own.get('_class_name')}', not a diffusers scheduler",
                              f"pass --scheduler {' or '.join(SCHEDULERS)}")
    return cls.from_config(own), f"{cls.__name__} (the model's scheduler_config.json)"


@dataclasses.dataclass
class SampleResult:
    latents: np.ndarray
    step_ms: list[float]
    total_ms: float


def _input_spec(model: PlannedModel, name: str) -> dict:
    spec = next((s for s in model.inputs if s["name"] == name), None)
    if spec is None:
        raise GenzipError(
            f"artifact {model.folder} has no '{name}' input, so it is not a DiT",
            "sample a DiT artifact (e.g. genzip-compile tiny-pixart or tiny-dit)",
        )
    return spec


def default_conditioning(model: PlannedModel, batch: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random (cond, uncond): prompt embeddings and zeros, or class labels and the null class."""
    return conditioning.default_conditioning(model, batch, seed)


def sample(
    model: PlannedModel,
    prompt_embeds: np.ndarray,
    negative_prompt_embeds: np.ndarray,
    *,
    steps: int,
    cfg: float,
    seed: int = 0,
    scheduler: str | None = None,
    progress=None,
    call=None,
    scheduler_config: dict | None = None,
    extra: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> SampleResult:
    """Latents ``[batch, C, H, W]`` after ``steps`` guided steps (rules in the module docstring).

    ``prompt_embeds`` / ``negative_prompt_embeds`` are the conditional / unconditional
    values of the artifact's conditioning input: embeddings ``[B, T, C]``, or class
    labels ``[B]`` and the null class (``conditioning.class_pair``). ``extra`` holds the
    (cond, uncond) rows of any other per-prompt input (SD3's ``pooled_projections``).

    ``call(feeds, step) -> output`` replaces the plan-driven transformer call (the plan
    search decides each step's modes itself). ``scheduler`` and ``scheduler_config`` pick the
    scheduler (``scheduler_for``: by default the artifact's own scheduler config when it has
    one, else DPM-Solver++ with diffusers' defaults).
    """
    import torch

    if steps < 1:
        raise GenzipError(f"--steps {steps} must be >= 1", "pass a positive step count")
    if prompt_embeds.shape != negative_prompt_embeds.shape:
        raise GenzipError("prompt and negative prompt embeddings differ in shape", "give both the same shape")
    cond_name = conditioning.conditioning_input(model)
    if cond_name == conditioning.CLASS:
        null = conditioning.null_class(model)
        conditioning.check_labels(prompt_embeds, null, "class labels")
        if not np.all(negative_prompt_embeds == null):
            raise GenzipError(f"the unconditional labels must all be the null class {null}",
                              "use conditioning.class_pair(model, labels)")
    extra = extra or {}
    conditioning.check_extra(model, extra, len(prompt_embeds))
    if call is None:
        model.check_steps(steps)
    spec = _input_spec(model, "hidden_states")
    channels, height, width = traced_shape(spec["shape"], model.manifest)[1:]
    out_channels = model.manifest["outputs"][0]["shape"][1]
    batch = prompt_embeds.shape[0]
    sched, _ = scheduler_for(model, scheduler, scheduler_config)
    sched.set_timesteps(steps)
    gen = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, channels, height, width, generator=gen) * getattr(sched, "init_noise_sigma", 1.0)
    dtypes = {s["name"]: np_dtype(s["dtype"]) for s in model.inputs}  # fp16 artifacts take fp16
    pair_cond = np.concatenate([negative_prompt_embeds, prompt_embeds]).astype(dtypes[cond_name])
    pair_extra = {name: np.concatenate([u, c]).astype(dtypes[name]) for name, (c, u) in extra.items()}
    model.caches.clear()
    step_ms = []
    start = time.perf_counter()
    for i, t in enumerate(sched.timesteps):
        t0 = time.perf_counter()
        pair = torch.cat([latents, latents])
        if hasattr(sched, "scale_model_input"):
            pair = sched.scale_model_input(pair, t)
        feeds = {
            "hidden_states": pair.numpy().astype(dtypes["hidden_states"]),
            "timestep": np.full((2 * batch,), float(t), dtype=dtypes["timestep"]),
            cond_name: pair_cond,
            **pair_extra,
        }
        if call is None:
            out = model.call(feeds, i, cfg_pair=True, identity="sampler")
        else:
            out = call(feeds, i)
        if out_channels == 2 * channels:
            out = out[:, :channels]
        uncond, cond = np.split(out.astype(np.float32), 2)
        guided = torch.from_numpy(uncond + cfg * (cond - uncond))
        latents = sched.step(guided, t, latents, return_dict=False)[0]
        step_ms.append((time.perf_counter() - t0) * 1e3)
        if progress:
            progress(i, steps)
    total = (time.perf_counter() - start) * 1e3
    return SampleResult(latents.numpy().astype(np.float32), step_ms, total)


def interleaved(runs, cond: np.ndarray, uncond: np.ndarray, *, repeat: int, progress=None,
                **sample_kwargs) -> tuple[dict[str, list[float]], dict[str, np.ndarray]]:
    """Time ``runs`` = [(name, model, plan)], one sampling each per round, rounds interleaved so
    machine noise hits every variant alike. Returns (total ms per round, last latents) by name."""
    times: dict[str, list[float]] = {name: [] for name, _, _ in runs}
    latents: dict[str, np.ndarray] = {}
    for r in range(repeat):
        for name, model, plan in runs:
            model.set_plan(plan)
            res = sample(model, cond, uncond, **sample_kwargs)
            times[name].append(res.total_ms)
            latents[name] = res.latents
            if progress:
                progress(f"round {r + 1}/{repeat} {name}: {res.total_ms:.0f} ms")
    return times, latents
