"""A compiled pipeline artifact (``genzip-compile PIPELINE_FOLDER``) opened as a diffusers pipeline.

``load_pipeline`` returns the pipeline class named in the artifact's top-level
``genzip.json`` (``PIPELINES``) built from ONNX Runtime
components: the transformer is ``DiffusersTransformer`` and the UNet ``DiffusersUNet``
(plan applied), each text encoder is an ``OrtTextEncoder`` (SD3: three) with the
artifact's own tokenizer files (SDXL: two), the VAE is ``OrtVaeDecoder`` (with the encoder where the pipeline
encodes images), the scheduler is the
pipeline's own (``scheduler/``). It is called like the original
(``pipe(class_labels=[...])`` or ``pipe(prompt=...)``, ``num_inference_steps=...,
generator=...``) and returns images.
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
    on the latents' device and dtype; ``config`` (``scaling_factor``, ``block_out_channels``)
    as the pipeline reads it. With ``encoder`` (an image pipeline's ``vae_encoder/``), also
    ``encode(image).latent_dist``: diffusers' ``DiagonalGaussianDistribution`` built from the
    exported mean and log-variance, so its ``sample(generator)`` draws what PyTorch's does."""

    def __init__(self, folder: str, config: dict[str, Any], threads: int | None = None, providers=None,
                 encoder: str | None = None):
        import torch
        from diffusers.configuration_utils import FrozenDict

        self.encoder = load_artifact(encoder, threads=threads, providers=providers) if encoder else None
        self.model = load_artifact(folder, threads=threads, providers=providers)
        self.config = FrozenDict(config)
        self.dtype = torch.float32
        self.device = torch.device("cpu")
        spec = self.model.inputs[0]
        self._input, self._dtype = spec["name"], np_dtype(spec["dtype"])

    def to(self, *args, **kwargs) -> OrtVaeDecoder:
        return self

    def modules(self):
        """See ``OrtTextEncoder.modules`` (SDXL asks the VAE's execution device too)."""
        return iter((self,))

    def decode(self, latents, return_dict: bool = True, generator=None):
        import torch
        from diffusers.models.autoencoders.vae import DecoderOutput

        z = latents.detach().cpu().float().numpy().astype(self._dtype)
        out = torch.from_numpy(run_in_batches(self.model, self._input, z)).to(device=latents.device,
                                                                                dtype=latents.dtype)
        return DecoderOutput(sample=out) if return_dict else (out,)


    def encode(self, image, return_dict: bool = True):
        import torch
        from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKLOutput
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        if self.encoder is None:
            raise GenzipError("this pipeline artifact has no VAE encoder (its pipeline does not encode images)",
                              "compile an image pipeline folder (e.g. StableDiffusionImg2ImgPipeline)")
        spec = self.encoder.inputs[0]
        x = image.detach().cpu().float().numpy().astype(np_dtype(spec["dtype"]))
        params = torch.from_numpy(run_in_batches(self.encoder, spec["name"], x)).to(device=image.device,
                                                                                     dtype=image.dtype)
        dist = DiagonalGaussianDistribution(params)
        return AutoencoderKLOutput(latent_dist=dist) if return_dict else (dist,)


def run_in_batches(model, name: str, x: np.ndarray, every: bool = False):
    """The first output of ``model`` on ``x`` as float32 (``every``: the list of all outputs); a
    static-batch export (the VAE decoder and text encoder, see genzip.pipeline) runs ``x`` in
    slices of its batch."""
    batch = model.inputs[0]["shape"][0]
    step = batch if isinstance(batch, int) else len(x)
    runs = [list(model.run({name: x[i:i + step]}).values()) for i in range(0, len(x), step)]
    outs = [np.concatenate([r[k] for r in runs]).astype(np.float32) for k in range(len(runs[0]))]
    return outs if every else outs[0]


class HiddenStates(tuple):
    """The ``hidden_states`` of a ``HIDDEN`` text encoder export: the penultimate layer's state
    only, which is what SD3 reads (``hidden_states[-2]``); any other layer (``clip_skip``) is
    refused in one line rather than answered with the wrong one."""

    def __getitem__(self, index):
        if index != -2:
            raise GenzipError(f"this genzip text encoder exports the penultimate hidden state only, not "
                              f"hidden_states[{index}]", "call the pipeline without clip_skip")
        return tuple.__getitem__(self, 0)


class TextEncoderOutput(tuple):
    """``(output_0,)`` with ``hidden_states`` (:class:`HiddenStates`), as SD3 reads a CLIP call."""

    hidden_states: HiddenStates


class OrtTextEncoder:
    """A transformers text encoder on ONNX Runtime: ``encoder(input_ids, attention_mask=None)[0]``
    is what the export's first output is (the last hidden state, or a projection CLIP's pooled
    ``text_embeds``), as diffusers' text pipelines read it; ``config`` is the encoder's.

    A CLIP export takes token ids only: its pipelines pass no mask (its config has no
    ``use_attention_mask``), and a mask with zeros would change the result, so it is
    refused. A T5 export (PixArt) has an ``attention_mask`` input, fed the pipeline's
    padding mask (all ones when none is passed, as in PyTorch). An export with a second
    output (SD3's CLIPs: the penultimate hidden state) answers ``output_hidden_states=True``
    with it as ``hidden_states[-2]``; without one, ``output_hidden_states`` is refused."""

    def __init__(self, folder: str, config: dict[str, Any], threads: int | None = None, providers=None):
        import torch
        from diffusers.configuration_utils import FrozenDict

        self.model = load_artifact(folder, threads=threads, providers=providers)
        self.config = FrozenDict(config)
        self.dtype = torch.float32
        self.device = torch.device("cpu")
        self._input = self.model.inputs[0]["name"]
        self._masked = any(spec["name"] == "attention_mask" for spec in self.model.inputs)
        self._hidden = len(self.model.output_names) > 1

    def to(self, *args, **kwargs) -> OrtTextEncoder:
        return self

    def modules(self):
        """What diffusers (SDXL's ``get_module_execution_device``) walks for offloading hooks: no
        torch submodules, so none; the execution device is then ``device``."""
        return iter((self,))

    def __call__(self, input_ids, attention_mask=None, output_hidden_states=None, **unused):
        import torch

        if self._masked:
            return (self._masked_call(input_ids, attention_mask),)
        if attention_mask is not None and not bool(torch.all(attention_mask != 0)):
            raise GenzipError("this genzip text encoder takes no attention_mask, and the mask given has zeros",
                              "pass token ids without a padding mask (the pipeline's own call passes none)")
        if output_hidden_states and not self._hidden:
            raise GenzipError("this genzip text encoder returns the last hidden state only",
                              "call the pipeline without clip_skip")
        ids = input_ids.detach().cpu().numpy().astype(np.int64)
        outs = [torch.from_numpy(o).to(input_ids.device) for o in run_in_batches(self.model, self._input, ids,
                                                                                 every=True)]
        if not self._hidden:
            return (outs[0],)
        result = TextEncoderOutput(outs[:1])
        result.hidden_states = HiddenStates(outs[1:2])
        return result

    def _masked_call(self, input_ids, attention_mask):
        import torch

        ids = input_ids.detach().cpu().numpy().astype(np.int64)
        mask = np.ones_like(ids) if attention_mask is None else attention_mask.detach().cpu().numpy().astype(np.int64)
        out = self.model.run({self._input: ids, "attention_mask": mask})
        return torch.from_numpy(next(iter(out.values())).astype(np.float32)).to(input_ids.device)


PIPELINES = ("DiTPipeline", "StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "PixArtAlphaPipeline",
             "PixArtSigmaPipeline", "StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline",
             "StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline")


def _tokenizer(artifact: str, manifest: dict[str, Any], name: str = "tokenizer"):
    import transformers

    spec = manifest.get("tokenizers", {"tokenizer": manifest.get("tokenizer")})[name]
    cls = getattr(transformers, spec["class"], None)
    if cls is None:
        raise GenzipError(f"transformers has no tokenizer class '{spec['class']}' (named in {artifact})",
                          "upgrade transformers or recompile the artifact")
    return cls.from_pretrained(os.path.join(artifact, spec["folder"]), local_files_only=True)


def _text_parts(artifact: str, manifest: dict[str, Any], path: dict[str, str], suffixes, threads, providers):
    """``text_encoder{suffix}`` and ``tokenizer{suffix}`` keywords of a pipeline with several
    encoders; one its model_index.json left null (SD3 without T5) is None, as diffusers loads it."""
    text: dict[str, Any] = {}
    for suffix in suffixes:
        part, present = f"text_encoder{suffix}", f"text_encoder{suffix}" in path
        text[part] = OrtTextEncoder(path[part], manifest["configs"][part], threads=threads,
                                    providers=providers) if present else None
        text[f"tokenizer{suffix}"] = _tokenizer(artifact, manifest, f"tokenizer{suffix}") if present else None
    return text


def load_pipeline(artifact: str, plan=None, providers=None, threads: int | None = None):
    """See ``genzip.load_pipeline``."""
    import diffusers

    from genzip.runtime.diffusers_adapter import DiffusersTransformer
    from genzip.runtime.plan import load_plan
    from genzip.runtime.unet_adapter import DiffusersUNet

    manifest = read_pipeline_manifest(artifact)
    if manifest is None:
        raise GenzipError(f"{artifact} is not a pipeline artifact (its genzip.json has no \"kind\": \"pipeline\")",
                          "compile a diffusers pipeline folder (model_index.json) with genzip-compile, "
                          "or open a single artifact with genzip.load")
    name = manifest.get("pipeline")
    if name not in PIPELINES:
        raise GenzipError(f"{artifact} holds a {name}, which this genzip cannot open",
                          "recompile it with this genzip")
    parts = manifest["components"]
    configs = manifest.get("configs", {})
    plan = load_plan(plan) if isinstance(plan, str) else plan
    path = {part: os.path.join(artifact, folder) for part, folder in parts.items()}
    vae = OrtVaeDecoder(path["vae_decoder"], configs.get("vae", manifest["vae"]), threads=threads,
                        providers=providers, encoder=path.get("vae_encoder"))
    config = jsonfile.read_json(os.path.join(artifact, manifest["scheduler"], "scheduler_config.json"),
                                "scheduler config", "recompile the artifact")
    scheduler = getattr(diffusers, config["_class_name"]).from_config(config)
    if name == "DiTPipeline":
        transformer = DiffusersTransformer(path["transformer"], plan, threads=threads, providers=providers)
        return diffusers.DiTPipeline(transformer=transformer, vae=vae, scheduler=scheduler,
                                     id2label=manifest.get("id2label"))
    if name.startswith("StableDiffusion3"):
        # the full config: the pipeline reads patch_size and joint_attention_dim off it
        transformer = DiffusersTransformer(path["transformer"], plan, threads=threads, providers=providers,
                                           config=configs["transformer"])
        text = _text_parts(artifact, manifest, path, ("", "_2", "_3"), threads, providers)
        return getattr(diffusers, name)(transformer=transformer, scheduler=scheduler, vae=vae, **text)
    if name.startswith("StableDiffusionXL"):
        import inspect

        unet = DiffusersUNet(path["unet"], configs["unet"], plan, threads=threads, providers=providers)
        cls = getattr(diffusers, name)
        # the pipeline's own settings (force_zeros_for_empty_prompt, img2img's requires_aesthetics_score)
        params = inspect.signature(cls.__init__).parameters
        options = {k: v for k, v in manifest.get("pipeline_options", {}).items() if k in params}
        return cls(vae=vae, unet=unet, scheduler=scheduler, **options,
                   **_text_parts(artifact, manifest, path, ("", "_2"), threads, providers))
    text_encoder = OrtTextEncoder(path["text_encoder"], configs["text_encoder"], threads=threads,
                                  providers=providers)
    if name.startswith("PixArt"):
        # cfg unset: a batch of prompts without guidance is no CFG pair, so a plan's share-cfg
        # steps run unshared (the adapter logs it) rather than share halves that differ.
        transformer = DiffusersTransformer(path["transformer"], plan, threads=threads, providers=providers)
        return getattr(diffusers, name)(tokenizer=_tokenizer(artifact, manifest), text_encoder=text_encoder,
                                        vae=vae, transformer=transformer, scheduler=scheduler)
    unet = DiffusersUNet(path["unet"], configs["unet"], plan, threads=threads, providers=providers)
    return getattr(diffusers, name)(
        vae=vae, text_encoder=text_encoder, tokenizer=_tokenizer(artifact, manifest), unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
