"""Drop-in transformer for diffusers pipelines: ``pipe.transformer = genzip.load(artifact)``.

``DiffusersTransformer`` answers the call the PixArt pipeline's denoising loop
makes (``transformer(latents, encoder_hidden_states=, encoder_attention_mask=,
timestep=, added_cond_kwargs=, return_dict=False)[0]``) with torch tensors in and
out, and carries ``config`` (``in_channels``, ``out_channels``, ``sample_size``,
…) and ``dtype``. It still accepts ``model(**numpy_feeds)`` / ``run`` like any
``genzip.load`` result (a dict of outputs).

Tensors come back on the device and in the dtype of the ``hidden_states`` passed in
(the pipeline's, e.g. CUDA fp16 after ``pipe.to("cuda", torch.float16)``); inside,
they cross to the host as NumPy in the artifact's own input dtypes (an fp16 artifact
is fed fp16) and ONNX Runtime runs them on the providers given at load.

With a plan (``set_plan``), steps are counted by ``StepClock`` (a new timestep is a
new step; a timestep larger than the previous one starts a new sampling run and
clears the caches) and caches are keyed by call identity (``caches``), so the
number of transformer calls per step does not matter.

Which calls are CFG pairs (for ASC, which computes one half and copies it) is never
guessed from the latents: two prompts sampled from the same seed have identical
latent halves too. It comes from ``cfg``, given to ``genzip.load`` or the constructor:

* ``"uncond-cond"``: every even batch is ``[uncond, cond]`` (diffusers' text pipelines,
  PixArt and SD3, with ``guidance_scale > 1``; genzip's own sampler);
* ``"cond-uncond"``: every even batch is ``[cond, uncond]``;
* ``"none"``: no call is a pair (``guidance_scale <= 1``, or a batch of prompts);
* ``None`` (default): class-conditional artifacts read the labels — a call is a pair
  when exactly one half is all null-class labels (the unconditional half, by
  definition of the null class); text artifacts then have no pair, and a plan with
  share-cfg steps logs once that ``cfg=`` is needed for them to share.

A class-conditional DiT artifact (``class_labels`` input) answers the call of
``DiTPipeline`` (``transformer(latents, timestep=, class_labels=).sample``). That
pipeline stacks its CFG batch as ``[cond, null]``, the reverse of the artifact's
``[uncond, cond]``; such a pair is swapped in and out around the call, so ASC shares
the half it was searched on.

An artifact exported with an ``encoder_attention_mask`` input (a PixArt or UNet export,
``[B, T]`` keep-mask, as the pipeline passes ``prompt_attention_mask``) is fed the mask
given, so padded prompts match PyTorch, and all ones when none is passed; PixArt's
``added_cond_kwargs`` ``resolution`` / ``aspect_ratio`` and SD3's ``pooled_projections``
are fed where the artifact has those inputs. An artifact whose graph has no mask input (an
older export, a model whose forward takes none) refuses a mask with zeros (padded prompt embeddings, whose output
would then differ from PyTorch) with an error that says so; an all-ones mask is
accepted. Latents, timesteps and
conditioning are checked against the artifact's input shapes before the call, so a
prompt or resolution the export does not take names the sizes it does.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from genzip.backends.runner import check_inputs, dim_ranges, np_dtype, traced_shape
from genzip.errors import GenzipError
from genzip.runtime import conditioning
from genzip.runtime import plan as plans
from genzip.runtime.caches import StepClock
from genzip.runtime.model import PlannedModel

logger = logging.getLogger(__name__)


def _config(model: PlannedModel, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The diffusers config the pipeline reads: ``base`` (the folder's ``config.json``, given by
    ``load_pipeline``) or the preset's, with the export's own channels and latent size."""
    info = model.manifest.get("source_info", {})
    config: dict[str, Any] = {k: v for k, v in (base or {}).items() if not k.startswith("_")}
    if info.get("preset"):
        from genzip.frontend.presets import get_preset

        config.update(get_preset(info["preset"]).config)
    spec = {s["name"]: s["shape"] for s in model.inputs}
    out = model.manifest["outputs"][0]["shape"]
    config.setdefault("in_channels", spec["hidden_states"][1])
    # the export's latent size (--height), not the preset's; a dynamic one: its traced size
    config["sample_size"] = traced_shape(spec["hidden_states"], model.manifest)[2]
    config.setdefault("out_channels", out[1])
    return config


CFG_LAYOUTS = ("uncond-cond", "cond-uncond", "none")


class DiffusersTransformer:
    """A compiled DiT artifact behaving like a diffusers transformer (see module docstring)."""

    def __init__(self, artifact: str, plan: plans.Plan | None = None, threads: int | None = None,
                 cfg: str | None = None, providers=None, config: dict[str, Any] | None = None):
        import torch
        from diffusers.configuration_utils import FrozenDict

        if cfg is not None and cfg not in CFG_LAYOUTS:
            raise GenzipError(f"cfg={cfg!r} is not a CFG batch layout",
                              f"use one of {', '.join(CFG_LAYOUTS)} (or leave it unset)")
        self.cfg = cfg
        self._warned_cfg = False
        self.model = PlannedModel(artifact, plan, threads=threads, providers=providers)
        self.config = FrozenDict(_config(self.model, config))
        self.dtype = torch.float32
        self.device = torch.device("cpu")
        self.clock = StepClock()
        self._last_t: float | None = None
        self.cond_input = conditioning.conditioning_input(self.model)
        self.null_class = conditioning.null_class(self.model) if self.cond_input == conditioning.CLASS else None
        self.has_mask = any(s["name"] == conditioning.MASK for s in self.model.inputs)

    def _input_dtype(self, name: str) -> np.dtype:
        spec = next(s for s in self.model.inputs if s["name"] == name)
        return np_dtype(spec["dtype"])

    def to(self, *args, **kwargs) -> DiffusersTransformer:
        """``pipe.to(...)`` compatibility: a no-op (the ORT providers chosen at load decide where
        it runs; outputs always come back on the device and dtype of the latents passed in)."""
        return self

    # --- genzip.load compatibility -------------------------------------------------
    @property
    def manifest(self) -> dict[str, Any]:
        return self.model.manifest

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_inputs(feeds, self.model.inputs, dim_ranges(self.manifest))
        names = self.model.output_names
        return dict(zip(names, self.model.session.run(names, feeds)))

    # --- diffusers ----------------------------------------------------------------
    def set_plan(self, plan: plans.Plan | None) -> None:
        self.model.set_plan(plan)
        self.reset()

    def reset(self) -> None:
        self.clock.reset()
        self.model.caches.clear()
        self._last_t = None

    def __call__(self, *args, **kwargs):
        if args or "return_dict" in kwargs or any(hasattr(v, "detach") for v in kwargs.values()):
            return self.forward(*args, **kwargs)
        return self.run(kwargs)

    def _conditioning(self, encoder_hidden_states, class_labels, batch: int) -> np.ndarray:
        given = encoder_hidden_states if self.cond_input == conditioning.TEXT else class_labels
        if given is None:
            raise GenzipError(f"this genzip transformer is conditioned on '{self.cond_input}', which was not passed",
                              f"call it with {self.cond_input}=...")
        value = given.detach().cpu().float().numpy() if hasattr(given, "detach") and given.is_floating_point() \
            else given.detach().cpu().numpy() if hasattr(given, "detach") else np.asarray(given)
        if self.cond_input == conditioning.TEXT:
            return value.astype(self._input_dtype(self.cond_input))
        labels = np.broadcast_to(value.reshape(-1), (batch,)).astype(np.int64)
        if np.any((labels < 0) | (labels > self.null_class)):
            raise GenzipError(f"class_labels {labels.tolist()} out of range [0, {self.null_class}]",
                              f"use labels below {self.null_class} ({self.null_class}: the null class)")
        return labels

    def _layout(self, cond: np.ndarray, batch: int) -> str:
        """This call's CFG layout: ``cfg`` when given, else read off class labels (module docstring)."""
        if batch % 2:
            return "none"
        if self.cfg is not None:
            return self.cfg
        if self.null_class is not None:
            half = batch // 2
            null = [bool(np.all(cond[s] == self.null_class)) for s in (slice(0, half), slice(half, batch))]
            some = [bool(np.any(cond[s] == self.null_class)) for s in (slice(half, batch), slice(0, half))]
            if null[0] and not some[0]:
                return "uncond-cond"
            if null[1] and not some[1]:
                return "cond-uncond"
            return "none"
        counts = self.model.plan.counts() if self.model.plan is not None else {}
        if not self._warned_cfg and any(counts.get(m) for m in (plans.SHARE_CFG, plans.FULL_CFG, plans.WINDOW_CFG)):
            self._warned_cfg = True
            logger.warning("genzip transformer: the plan's share-cfg steps run unshared because the CFG batch layout "
                           "is unknown; pass cfg='uncond-cond' to genzip.load (diffusers text pipelines with "
                           "guidance_scale > 1)")
        return "none"

    def _extra_conditions(self, added_cond_kwargs, pooled_projections) -> dict[str, np.ndarray]:
        """PixArt's ``resolution`` / ``aspect_ratio`` and SD3's ``pooled_projections`` feeds, where
        this artifact has those inputs."""
        names = {s["name"] for s in self.model.inputs}
        given = {**(added_cond_kwargs or {}), "pooled_projections": pooled_projections}
        extra: dict[str, np.ndarray] = {}
        for key in ("resolution", "aspect_ratio", "pooled_projections"):
            value = given.get(key)
            if key in names:
                if value is None:
                    call = f"{key}=..." if key == "pooled_projections" else f"added_cond_kwargs={{'{key}': ...}}"
                    raise GenzipError(f"this genzip transformer takes '{key}', which was not passed",
                                      f"pass {call} as the diffusers pipeline does")
                extra[key] = value.detach().cpu().float().numpy().astype(self._input_dtype(key))
        return extra

    def forward(self, hidden_states, encoder_hidden_states=None, timestep=None, added_cond_kwargs=None,
                cross_attention_kwargs=None, attention_mask=None, encoder_attention_mask=None,
                return_dict: bool = True, class_labels=None, pooled_projections=None, **unused):
        import torch

        # The artifact's own input dtype (fp16 artifacts take fp16); the output goes back
        # on the caller's device and dtype (the pipeline's), whatever the artifact computes in.
        latents = hidden_states.detach().cpu().float().numpy().astype(self._input_dtype("hidden_states"))
        batch = latents.shape[0]
        t = np.broadcast_to(np.asarray(timestep.detach().cpu().float() if hasattr(timestep, "detach") else timestep,
                                       dtype=np.float32).reshape(-1), (batch,)).astype(self._input_dtype("timestep"))
        cond = self._conditioning(encoder_hidden_states, class_labels, batch)
        mask = conditioning.prompt_mask(encoder_attention_mask,
                                        self._input_dtype(conditioning.MASK) if self.has_mask else None,
                                        self.model.inputs, "transformer")
        extra = self._extra_conditions(added_cond_kwargs, pooled_projections)
        if self._last_t is not None and float(t.max()) > self._last_t:
            self.reset()  # timesteps went up: a new sampling run
        self._last_t = float(t.max())
        step = self.clock.observe(t)
        half = batch // 2
        layout = self._layout(cond, batch)
        cfg_pair = layout in ("uncond-cond", "cond-uncond")
        # [cond, uncond] (DiTPipeline): swap to the artifact's [uncond, cond] (module docstring)
        swap = layout == "cond-uncond"
        order = np.r_[half:batch, 0:half] if swap else slice(None)
        feeds = {"hidden_states": latents[order], "timestep": t[order], self.cond_input: cond[order],
                 **{k: v[order] for k, v in extra.items()}}
        if mask is not None:
            feeds[conditioning.MASK] = mask[order]
        feeds = conditioning.with_prompt_mask(feeds, self.model.inputs)  # no mask given: keep every token
        check_inputs(feeds, self.model.inputs, dim_ranges(self.manifest))  # names the accepted sizes, before ORT's raw error
        result = self.model.call(feeds, step, cfg_pair=cfg_pair)
        result = result if result.dtype in (np.float32, np.float16) else result.astype(np.float32)  # bf16: no torch view
        out = torch.from_numpy(np.ascontiguousarray(result[order]) if swap else result)
        out = out.to(device=hidden_states.device, dtype=hidden_states.dtype)
        if not return_dict:
            return (out,)
        from diffusers.models.modeling_outputs import Transformer2DModelOutput

        return Transformer2DModelOutput(sample=out)
