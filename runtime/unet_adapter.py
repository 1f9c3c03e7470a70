"""Drop-in UNet for diffusers pipelines: the call ``StableDiffusionPipeline`` makes.

``DiffusersUNet`` answers ``unet(sample, timestep, encoder_hidden_states=...,
return_dict=False)[0]`` with torch tensors in and out (on the device and dtype of the
``sample`` passed in) and carries the UNet's ``config`` (``in_channels``,
``sample_size``, ``time_cond_proj_dim``, ... as the pipeline reads them). The scalar
timestep the pipeline passes is broadcast to the batch, as the UNet itself does.
``added_cond_kwargs`` entries (SDXL's ``text_embeds`` and ``time_ids``) are fed to the
graph inputs of the same names; ``add_embedding.linear_1.in_features`` is the width SDXL
checks its time ids against (``projection_class_embeddings_input_dim``).
A static-batch export (torch.export finds a batch constraint in ``UNet2DConditionModel``)
runs the batch in slices of its size, the last slice padded with copies of its last
row and trimmed after: every sample of a UNet batch is computed independently.

Invariant: the feeds are checked against the artifact's inputs before ORT runs, so a
prompt length or resolution the export does not take names the sizes it does. Inputs
the exported graph does not have (``timestep_cond``, an ``added_cond_kwargs`` entry,
``cross_attention_kwargs``) must be absent: a value given is refused, not ignored.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np

from genzip.backends.runner import check_inputs, dim_ranges, np_dtype
from genzip.errors import GenzipError
from genzip.runtime import conditioning
from genzip.runtime.caches import StepClock
from genzip.runtime.model import PlannedModel


class DiffusersUNet:
    """A compiled UNet artifact behaving like ``diffusers.UNet2DConditionModel`` (module docstring)."""

    def __init__(self, artifact: str, config: dict[str, Any], plan=None, threads: int | None = None, providers=None):
        import torch
        from diffusers.configuration_utils import FrozenDict

        self.model = PlannedModel(artifact, plan, threads=threads, providers=providers)
        self.config = FrozenDict(config)
        self.dtype = torch.float32
        self.device = torch.device("cpu")
        self.clock = StepClock()
        self._last_t: float | None = None
        self._dtypes = {s["name"]: np_dtype(s["dtype"]) for s in self.model.inputs}
        # SDXL's _get_add_time_ids reads the added-embedding width off the module itself
        width = config.get("projection_class_embeddings_input_dim")
        self.add_embedding = SimpleNamespace(linear_1=SimpleNamespace(in_features=width)) if width else None

    def to(self, *args, **kwargs) -> DiffusersUNet:
        """``pipe.to(...)`` compatibility: a no-op (ORT's providers, chosen at load, decide where it runs)."""
        return self

    def __call__(self, sample, timestep, encoder_hidden_states=None, timestep_cond=None, added_cond_kwargs=None,
                 cross_attention_kwargs=None, return_dict: bool = True, encoder_attention_mask=None, **unused):
        import torch

        added = dict(added_cond_kwargs or {})
        given = {"timestep_cond": timestep_cond, "cross_attention_kwargs": cross_attention_kwargs or None,
                 **{f"added_cond_kwargs['{k}']": v for k, v in added.items() if k not in self._dtypes}}
        extra = [k for k, v in given.items() if v is not None and k not in self._dtypes]
        if extra:
            raise GenzipError(f"this genzip UNet was exported without {', '.join(extra)}",
                              "call the pipeline without the options that need them")
        missing = [n for n in ("text_embeds", "time_ids") if n in self._dtypes and n not in added]
        if missing:
            raise GenzipError(f"this genzip UNet takes added_cond_kwargs {', '.join(missing)}, which were not passed",
                              "call it as StableDiffusionXLPipeline does (added_cond_kwargs={'text_embeds': ..., "
                              "'time_ids': ...})")
        x = sample.detach().cpu().float().numpy().astype(self._dtypes["sample"])
        batch = x.shape[0]
        t = np.asarray(timestep.detach().cpu().float() if hasattr(timestep, "detach") else timestep, dtype=np.float32)
        feeds = {"sample": x, "timestep": np.broadcast_to(t.reshape(-1), (batch,)).astype(self._dtypes["timestep"])}
        if encoder_hidden_states is not None:
            feeds["encoder_hidden_states"] = (encoder_hidden_states.detach().cpu().float().numpy()
                                              .astype(self._dtypes["encoder_hidden_states"]))
        for key, value in added.items():  # [B, D] each, batched like the sample
            feeds[key] = value.detach().cpu().float().numpy().astype(self._dtypes[key])
        mask = conditioning.prompt_mask(encoder_attention_mask, self._dtypes.get(conditioning.MASK),
                                        self.model.inputs, "UNet")
        if mask is not None:
            feeds[conditioning.MASK] = mask
        # Stable Diffusion pipelines pass no mask (CLIP's padding is attended to, as in PyTorch): all ones.
        feeds = conditioning.with_prompt_mask(feeds, self.model.inputs)
        check_inputs({k: v[:1] for k, v in feeds.items()}, _any_batch(self.model.inputs),
                     dim_ranges(self.model.manifest))
        if self._last_t is not None and float(t.max()) > self._last_t:  # timesteps went up: a new sampling run
            self.clock.reset()
            self.model.caches.clear()
        self._last_t = float(t.max())
        step = self.clock.observe(feeds["timestep"])
        result = np.concatenate([self.model.call(part, step, cfg_pair=False)[:rows]
                                 for part, rows in _slices(feeds, self.model.inputs[0]["shape"][0])])
        result = result if result.dtype in (np.float32, np.float16) else result.astype(np.float32)
        out = torch.from_numpy(np.ascontiguousarray(result)).to(device=sample.device, dtype=sample.dtype)
        if not return_dict:
            return (out,)
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        return UNet2DConditionOutput(sample=out)


def _any_batch(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The input specs with a free batch axis (the batch is sliced, see the module docstring)."""
    return [dict(s, shape=["batch", *s["shape"][1:]]) for s in specs]


def _slices(feeds: dict[str, np.ndarray], batch) -> list[tuple[dict[str, np.ndarray], int]]:
    """``feeds`` cut into the artifact's static ``batch`` (whole when dynamic), each with its real row count."""
    total = len(next(iter(feeds.values())))
    if not isinstance(batch, int) or batch == total:
        return [(feeds, total)]
    out = []
    for start in range(0, total, batch):
        part = {k: v[start:start + batch] for k, v in feeds.items()}
        rows = len(part["sample"])
        pad = {k: np.concatenate([v, np.repeat(v[-1:], batch - rows, axis=0)]) for k, v in part.items()}
        out.append((pad, rows))
    return out
