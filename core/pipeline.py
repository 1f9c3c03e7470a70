"""``genzip-compile PIPELINE_FOLDER``: a whole diffusers pipeline into one artifact folder.

Supported pipeline classes (``PIPELINES``): ``DiTPipeline`` (class-conditional DiT
transformer, VAE decoder, scheduler) and ``StableDiffusionPipeline`` (UNet, CLIP text
encoder and its tokenizer, VAE decoder, scheduler). Other pipeline folders keep
compiling their denoiser alone (``genzip.frontend.hf_folder``).

Invariant: the artifact folder is complete or absent (it is staged and renamed);
it holds one sub-artifact per neural component (``transformer/`` or ``unet/``,
``text_encoder/``, ``vae_decoder/``), each a normal genzip artifact with its own
manifest and fidelity gate, plus the pipeline's ``model_index.json``, ``scheduler/``
and ``tokenizer/`` files, and a top-level ``genzip.json`` with ``"kind": "pipeline"``
naming them and holding each component's config (what the diffusers pipeline reads).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from genzip.backends.artifact import staged_folder, write_json
from genzip.errors import GenzipError
from genzip.runtime.pipeline import MANIFEST, PIPELINE_KIND

# pipeline class -> its denoiser folder; text pipelines also have text_encoder/ and tokenizer/.
PIPELINES = {"DiTPipeline": "transformer", "StableDiffusionPipeline": "unet"}
TEXT_PIPELINES = ("StableDiffusionPipeline",)


_COMPONENT_SPEC = re.compile(r"^([a-z_]+)=(.*)$", re.S)


def split_component_passes(passes: str | list[str] | tuple[str, ...]) -> tuple[str, dict[str, str]]:
    """(the bare spec, {component: spec}) of ``--passes`` values: ``NAME=SPEC`` names a
    pipeline component (a pass spec never matches: options sit inside ``{...}``), anything
    else is the denoiser's and the bare values are joined in order. A component named
    twice is a one-line error."""
    values = [passes] if isinstance(passes, str) else list(passes)
    bare: list[str] = []
    named: dict[str, str] = {}
    for value in values:
        match = _COMPONENT_SPEC.match(value.strip())
        if match is None:
            if value.strip():
                bare.append(value.strip())
            continue
        name, spec = match.groups()
        if name in named:
            raise GenzipError(f"--passes names component '{name}' twice", f"give one --passes {name}=SPEC")
        named[name] = spec.strip()
    return ",".join(bare), named


def component_names(name: str) -> tuple[str, ...]:
    """The component names ``--passes NAME=SPEC`` takes for pipeline class ``name``."""
    return (PIPELINES[name],) + (("text_encoder",) if name in TEXT_PIPELINES else ()) + ("vae",)


def pipeline_class(model_ref: Any) -> str | None:
    """The ``_class_name`` of a diffusers pipeline folder genzip compiles whole, else None."""
    if not isinstance(model_ref, (str, os.PathLike)):
        return None
    index = Path(model_ref).expanduser() / "model_index.json"
    if not index.is_file():
        return None
    try:
        name = json.loads(index.read_text()).get("_class_name")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise GenzipError(f"'{index}' is not valid JSON ({e})", "fix or re-create model_index.json") from e
    return name if name in PIPELINES else None


def _text_encoder(folder: Path, class_name: str):
    """(the text encoder as a module ``input_ids -> last_hidden_state``, example token ids,
    its config dict). The example is one prompt padded to the tokenizer's length, as the
    pipeline tokenizes (``padding="max_length"``)."""
    import torch
    import transformers

    cls = getattr(transformers, class_name, None)
    if cls is None:
        raise GenzipError(f"transformers has no text encoder class '{class_name}'",
                          "check model_index.json or upgrade transformers")
    encoder = cls.from_pretrained(folder / "text_encoder", local_files_only=True, use_safetensors=True,
                                  dtype=torch.float32).eval()
    tok_config = json.loads((folder / "tokenizer" / "tokenizer_config.json").read_text())
    length = int(tok_config.get("model_max_length") or encoder.config.max_position_embeddings)

    class TextEncoder(torch.nn.Module):
        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids):
            return self.encoder(input_ids, return_dict=False)[0]

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, encoder.config.vocab_size, (1, length), generator=g)
    return TextEncoder(encoder).eval(), ids, encoder.config.to_dict()


def _vae_decoder(folder: Path, denoiser: str):
    """(the VAE's decode as a module, its example latents, its scaling factor)."""
    import diffusers
    import torch

    vae = diffusers.AutoencoderKL.from_pretrained(str(folder / "vae")).eval()

    class VaeDecoder(torch.nn.Module):
        def __init__(self, vae):
            super().__init__()
            self.vae = vae

        def forward(self, latent):
            return self.vae.decode(latent, return_dict=False)[0]

    size = json.loads((folder / denoiser / "config.json").read_text())["sample_size"]
    g = torch.Generator().manual_seed(0)
    # Batch 1: the decoder's export is not batch-dynamic (torch.export finds a batch constraint in
    # AutoencoderKL.decode), so OrtVaeDecoder decodes one latent per call.
    latents = torch.randn(1, vae.config.latent_channels, size, size, generator=g)
    return VaeDecoder(vae).eval(), latents, dict(vae.config)


def _side_options(options, passes: str):
    """Options of a component other than the denoiser (the text encoder, the VAE decoder): its
    own ``passes`` (none by default: exported and verified), the pipeline's target, checks,
    gate, providers and dtype."""
    from genzip.compile import CompileOptions

    return CompileOptions(target=options.target, passes=passes, seed=options.seed, verify=options.verify,
                          min_cosine=options.min_cosine, providers=options.providers, device=options.device,
                          dtype=options.dtype)


def check_component_passes(name: str, component_passes: dict[str, str]) -> None:
    """Refuse, in one line and before anything compiles, ``--passes NAME=SPEC`` for a
    component pipeline ``name`` lacks, or with a spec that does not build."""
    from genzip.passes import build_pipeline

    known = component_names(name)
    unknown = sorted(set(component_passes) - set(known))
    if unknown:
        raise GenzipError(f"--passes {unknown[0]}=... names no component of a {name}",
                          f"name one of {', '.join(known)} (a bare --passes SPEC is the {known[0]}'s)")
    for spec in component_passes.values():
        build_pipeline(spec)


def compile_pipeline(folder: str, out_dir: str, options, progress: Callable[[str], None] | None = None,
                     config: dict[str, Any] | None = None,
                     component_passes: dict[str, str] | None = None) -> dict[str, Any]:
    """Compile every neural component of the pipeline ``folder`` into ``out_dir``; return
    the top-level manifest. ``options`` (``CompileOptions``): the pipeline spec and recipe
    apply to the denoiser; ``component_passes`` (``--passes NAME=SPEC``) adds a spec per
    component (the denoiser's is appended after ``options.passes``); a component without
    one is exported and verified. ``dtype`` applies to all."""
    import dataclasses

    from genzip.compile import compile_model

    root = Path(folder).expanduser()
    name = pipeline_class(root)
    denoiser = PIPELINES[name]
    text = name in TEXT_PIPELINES
    component_passes = dict(component_passes or {})
    check_component_passes(name, component_passes)
    denoiser_spec = ",".join(s for s in (options.passes, component_passes.get(denoiser, "")) if s)
    index = json.loads((root / "model_index.json").read_text())
    for part in (denoiser, "vae", "scheduler") + (("text_encoder", "tokenizer") if text else ()):
        if not (root / part).is_dir():
            raise GenzipError(f"'{root}' is a {name} folder without its '{part}' folder",
                              "pass a folder written by the pipeline's save_pretrained()")
    say = progress or (lambda _: None)
    with staged_folder(out_dir, options.force) as tmp:
        fidelity, passes, components, configs = {}, {}, {}, {}

        def record(part: str, manifest: dict[str, Any]) -> None:
            components[part] = part
            fidelity[part], passes[part] = manifest["fidelity"], manifest["passes"]

        say(f"{name}: compiling the {denoiser}")
        record(denoiser, compile_model(str(root / denoiser), os.path.join(tmp, denoiser),
                                       dataclasses.replace(options, passes=denoiser_spec, force=False,
                                                           reproducer_dir=None), progress,
                                       config=config))
        configs[denoiser] = json.loads((root / denoiser / "config.json").read_text())
        if text:
            say(f"{name}: compiling the text encoder")
            module, ids, configs["text_encoder"] = _text_encoder(root, index["text_encoder"][1])
            record("text_encoder", compile_model(module, os.path.join(tmp, "text_encoder"),
                                                 _side_options(options, component_passes.get("text_encoder", "")),
                                                 progress, example_call=(ids,)))
            shutil.copytree(root / "tokenizer", os.path.join(tmp, "tokenizer"))
        say(f"{name}: compiling the VAE decoder")
        module, latents, configs["vae"] = _vae_decoder(root, denoiser)
        record("vae_decoder", compile_model(module, os.path.join(tmp, "vae_decoder"),
                                            _side_options(options, component_passes.get("vae", "")),
                                            progress, example_call=(latents,)))
        shutil.copytree(root / "scheduler", os.path.join(tmp, "scheduler"))
        shutil.copyfile(root / "model_index.json", os.path.join(tmp, "model_index.json"))
        manifest = {
            "kind": PIPELINE_KIND,
            "pipeline": name,
            "source": str(root.resolve()),
            "components": components,
            "vae": {"scaling_factor": float(configs["vae"]["scaling_factor"])},
            "configs": configs,
            "id2label": index.get("id2label"),
            "scheduler": "scheduler",
            "fidelity": fidelity,
            "passes": passes,
        }
        if text:
            manifest["tokenizer"] = {"folder": "tokenizer", "class": index["tokenizer"][1]}
        if config is not None:
            manifest["config"] = config
        write_json(os.path.join(tmp, MANIFEST), manifest)
    return manifest
