"""A compiled pipeline artifact (``genzip-compile PIPELINE_FOLDER``) opened as a diffusers pipeline.

``load_pipeline`` returns the pipeline class named in the artifact's top-level
``genzip.json`` (``DiTPipeline``) built from ONNX Runtime components: the transformer
is ``DiffusersTransformer`` (plan applied), the VAE decoder is ``OrtVaeDecoder``, the
scheduler is the pipeline's own (``scheduler/``). It is called like the original
(``pipe(class_labels=[...], num_inference_steps=..., generator=...)``) and returns images.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from genzip import jsonfile
from genzip.backends.runner import load_artifact, np_dtype
from genzip.errors import GenzipError

PIPELINE_KIND = "pipeline"
MANIFEST = "genzip.json"


def read_pipeline_manifest(artifact: str) -> dict[str, Any] | None:
    """The top-level manifest of a pipeline artifact, or None for any other folder."""
    path = os.path.join(artifact, MANIFEST)
    if not os.path.isfile(path):
        return None
    manifest = jsonfile.read_json(path, "manifest", "recompile the artifact")
    return manifest if isinstance(manifest, dict) and manifest.get("kind") == PIPELINE_KIND else None


class OrtVaeDecoder:
    """The VAE's ``decode`` on ONNX Runtime: ``decode(latents).sample`` as diffusers calls it,
    on the latents' device and dtype; ``config.scaling_factor`` as the pipeline reads it."""

    def __init__(self, folder: str, scaling_factor: float, threads: int | None = None, providers=None):
        import torch
        from diffusers.configuration_utils import FrozenDict

        self.model = load_artifact(folder, threads=threads, providers=providers)
        self.config = FrozenDict(scaling_factor=scaling_factor)
        self.dtype = torch.float32
        self.device = torch.device("cpu")
        spec = self.model.inputs[0]
        self._input, self._dtype = spec["name"], np_dtype(spec["dtype"])

    def to(self, *args, **kwargs) -> OrtVaeDecoder:
        return self

    def decode(self, latents, return_dict: bool = True):
        import torch
        from diffusers.models.autoencoders.vae import DecoderOutput

        batch = self.model.inputs[0]["shape"][0]
        z = latents.detach().cpu().float().numpy().astype(self._dtype)
        # A static-batch decoder (see genzip.pipeline) decodes the latents in slices of its batch.
        step = batch if isinstance(batch, int) else len(z)
        images = [next(iter(self.model.run({self._input: z[i:i + step]}).values())) for i in range(0, len(z), step)]
        out = torch.from_numpy(np.concatenate(images).astype(np.float32)).to(device=latents.device, dtype=latents.dtype)
        return DecoderOutput(sample=out) if return_dict else (out,)


def load_pipeline(artifact: str, plan=None, providers=None, threads: int | None = None):
    """See ``genzip.load_pipeline``."""
    import diffusers

    from genzip.runtime.diffusers_adapter import DiffusersTransformer
    from genzip.runtime.plan import load_plan

    manifest = read_pipeline_manifest(artifact)
    if manifest is None:
        raise GenzipError(f"{artifact} is not a pipeline artifact (its genzip.json has no \"kind\": \"pipeline\")",
                          "compile a diffusers pipeline folder (model_index.json) with genzip-compile, "
                          "or open a single artifact with genzip.load")
    if manifest.get("pipeline") != "DiTPipeline":
        raise GenzipError(f"{artifact} holds a {manifest.get('pipeline')}, which this genzip cannot open",
                          "recompile it with this genzip")
    parts = manifest["components"]
    transformer = DiffusersTransformer(os.path.join(artifact, parts["transformer"]),
                                       load_plan(plan) if isinstance(plan, str) else plan,
                                       threads=threads, providers=providers)
    vae = OrtVaeDecoder(os.path.join(artifact, parts["vae_decoder"]), manifest["vae"]["scaling_factor"],
                        threads=threads, providers=providers)
    config = jsonfile.read_json(os.path.join(artifact, manifest["scheduler"], "scheduler_config.json"),
                                "scheduler config", "recompile the artifact")
    scheduler = getattr(diffusers, config["_class_name"]).from_config(config)
    return diffusers.DiTPipeline(transformer=transformer, vae=vae, scheduler=scheduler, id2label=manifest.get("id2label"))
