"""``genzip-compile PIPELINE_FOLDER``: a whole diffusers pipeline into one artifact folder.

Supported pipeline classes (``PIPELINES``): ``DiTPipeline`` (class-conditional DiT
transformer, VAE decoder, scheduler), ``StableDiffusionPipeline`` (UNet, CLIP text
encoder and its tokenizer, VAE decoder, scheduler; ``StableDiffusionImg2ImgPipeline``
also the VAE encoder), ``PixArtAlphaPipeline`` / ``PixArtSigmaPipeline`` (PixArt
transformer and T5 text encoder, both taking the prompt's padding mask),
``StableDiffusion3Pipeline`` (SD3 transformer with pooled projections, two projection
CLIPs giving pooled and penultimate states, T5 without mask, three tokenizers) and
``StableDiffusionXLPipeline`` (UNet with the ``text_time`` added conditions, two CLIPs
giving penultimate states and the second's pooled projection); their ``Img2Img`` siblings
also the VAE encoder. Other
pipeline folders keep compiling their denoiser alone (``genzip.frontend.hf_folder``).

Invariant: the artifact folder is complete or absent (it is staged and renamed);
it holds one sub-artifact per neural component (``transformer/`` or ``unet/``,
``text_encoder/`` (``text_encoder_2/``, ``text_encoder_3/``), ``vae_decoder/``,
``vae_encoder/``), each a normal genzip artifact with its own manifest and fidelity gate,
plus the pipeline's ``model_index.json``, ``scheduler/`` and ``tokenizer/`` (``tokenizer_2/``,
``tokenizer_3/``) files, and a top-level ``genzip.json`` with ``"kind": "pipeline"``
naming them and holding each component's config (what the diffusers pipeline reads).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from genzip import pipeline_parts as parts
from genzip._version import __version__
from genzip.backends.artifact import staged_folder, write_json
from genzip.errors import GenzipError
from genzip.runtime.pipeline import MANIFEST, PIPELINE_KIND

# pipeline class -> its denoiser folder; text pipelines also have their TEXT_ENCODERS.
PIPELINES = {"DiTPipeline": "transformer", "StableDiffusionPipeline": "unet",
             "StableDiffusionImg2ImgPipeline": "unet",
             "PixArtAlphaPipeline": "transformer", "PixArtSigmaPipeline": "transformer",
             "StableDiffusion3Pipeline": "transformer", "StableDiffusion3Img2ImgPipeline": "transformer",
             "StableDiffusionXLPipeline": "unet", "StableDiffusionXLImg2ImgPipeline": "unet"}
# Text encoders of each text pipeline: (component, its tokenizer, what the export returns
# (pipeline_parts.LAST/MASKED/HIDDEN), the prompt length it pads to: None is the tokenizer's
# model_max_length). A component model_index.json leaves null (SD3 without T5) is skipped.
TEXT_ENCODERS = {
    "StableDiffusionPipeline": (("text_encoder", "tokenizer", parts.LAST, None),),
    "StableDiffusionImg2ImgPipeline": (("text_encoder", "tokenizer", parts.LAST, None),),
    "PixArtAlphaPipeline": (("text_encoder", "tokenizer", parts.MASKED, 120),),
    "PixArtSigmaPipeline": (("text_encoder", "tokenizer", parts.MASKED, 300),),
    "StableDiffusion3Pipeline": (("text_encoder", "tokenizer", parts.HIDDEN, None),
                                 ("text_encoder_2", "tokenizer_2", parts.HIDDEN, None),
                                 ("text_encoder_3", "tokenizer_3", parts.LAST, 256)),
    # SDXL reads both penultimate states (concatenated) and the second encoder's pooled projection
    "StableDiffusionXLPipeline": (("text_encoder", "tokenizer", parts.HIDDEN, None),
                                  ("text_encoder_2", "tokenizer_2", parts.HIDDEN, None)),
}
TEXT_ENCODERS["StableDiffusion3Img2ImgPipeline"] = TEXT_ENCODERS["StableDiffusion3Pipeline"]
TEXT_ENCODERS["StableDiffusionXLImg2ImgPipeline"] = TEXT_ENCODERS["StableDiffusionXLPipeline"]
# Pipelines that encode an input image with the VAE (vae_encoder/).
IMAGE_PIPELINES = ("StableDiffusionImg2ImgPipeline", "StableDiffusion3Img2ImgPipeline", "StableDiffusionXLImg2ImgPipeline")
# Pipelines that pass the prompt's padding mask to the text encoder and the denoiser, with the
# prompt length they pad to (their __call__'s max_sequence_length default).
MASKED_TEXT_LENGTH = {"PixArtAlphaPipeline": 120, "PixArtSigmaPipeline": 300}
# SD3's transformer takes the CLIP states (tokenizer length) and T5's (max_sequence_length
# default 256) concatenated along the tokens.
SD3_T5_LENGTH = 256


def component_names(name: str) -> tuple[str, ...]:
    """The component names ``--passes NAME=SPEC`` takes for pipeline class ``name``."""
    return (PIPELINES[name],) + tuple(part for part, *_ in TEXT_ENCODERS.get(name, ())) + ("vae",)


def text_encoders(name: str, index: dict[str, Any]) -> list[tuple[str, str, str, int | None]]:
    """The ``TEXT_ENCODERS`` rows of pipeline ``name`` whose component ``model_index.json`` names."""
    return [row for row in TEXT_ENCODERS.get(name, ()) if (index.get(row[0]) or [None])[0] is not None]


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
    from genzip.frontend.export_sizes import check_diffusers

    root = Path(folder).expanduser()
    name = pipeline_class(root)
    denoiser = PIPELINES[name]
    component_passes = dict(component_passes or {})
    check_component_passes(name, component_passes)
    denoiser_spec = ",".join(s for s in (options.passes, component_passes.get(denoiser, "")) if s)
    index = json.loads((root / "model_index.json").read_text())
    encoders = text_encoders(name, index)
    for part in (denoiser, "vae", "scheduler") + tuple(p for row in encoders for p in row[:2]):
        if not (root / part).is_dir():
            raise GenzipError(f"'{root}' is a {name} folder without its '{part}' folder",
                              "pass a folder written by the pipeline's save_pretrained()")
    sizes = options.export_sizes()
    if sizes.text_len or sizes.seq_len:
        raise GenzipError(f"--text-len / --seq-len cannot apply to a {name} folder: its tokenizer's maximum "
                          "length sets the text length of every component",
                          "drop them (--height/--width/--sample-size apply to a pipeline)")
    if options.dynamic_axes != "none":  # each component is traced at the pipeline's own sizes
        raise GenzipError(f"--dynamic-axes cannot apply to a whole {name} folder",
                          f"compile its {denoiser} folder alone with --dynamic-axes, or drop it")
    say = progress or (lambda _: None)
    with staged_folder(out_dir, options.force) as tmp:
        fidelity, passes, components, configs, tokenizers = {}, {}, {}, {}, {}

        def record(part: str, manifest: dict[str, Any]) -> None:
            components[part] = part
            fidelity[part], passes[part] = manifest["fidelity"], manifest["passes"]

        say(f"{name}: compiling the {denoiser}")
        denoiser_opts = dataclasses.replace(options, passes=denoiser_spec, force=False, reproducer_dir=None)
        length = MASKED_TEXT_LENGTH.get(name)
        if length is None:
            if encoders:  # the prompt length the pipeline pads to: CLIP's (SD3: then T5's, SD3_T5_LENGTH)
                clip = parts.tokenizer_length(root, "tokenizer") or 77
                extra = SD3_T5_LENGTH if name.startswith("StableDiffusion3") else 0
                denoiser_opts = dataclasses.replace(denoiser_opts, text_len=clip + extra)
            record(denoiser, compile_model(str(root / denoiser), os.path.join(tmp, denoiser), denoiser_opts, progress,
                                           config=config))
        else:  # the padding mask is a graph input (pipeline_parts.masked_transformer)
            module, call, _ = parts.masked_transformer(root, length, height=sizes.height, width=sizes.width)
            check_diffusers(dataclasses.replace(sizes, text_len=None), module.model, has_text=True)
            # the example call is built at the sizes asked for, so they leave the options
            fixed = dataclasses.replace(denoiser_opts, height=None, width=None, sample_size=None)
            record(denoiser, compile_model(module, os.path.join(tmp, denoiser), fixed, progress,
                                           example_call=call, config=config,
                                           calibration=parts.masked_calibration(module, call, options.seed)))
        configs[denoiser] = json.loads((root / denoiser / "config.json").read_text())
        for part, tokenizer, mode, text_len in encoders:
            say(f"{name}: compiling the {part.replace('_', ' ')}")
            module, call, configs[part] = parts.text_encoder(root, index[part][1], text_len, mode, part=part,
                                                             tokenizer=tokenizer)
            record(part, compile_model(module, os.path.join(tmp, part),
                                       _side_options(options, component_passes.get(part, "")), progress,
                                       example_call=call))
            if tokenizer not in tokenizers:
                shutil.copytree(root / tokenizer, os.path.join(tmp, tokenizer))
                tokenizers[tokenizer] = {"folder": tokenizer, "class": index[tokenizer][1]}
        say(f"{name}: compiling the VAE decoder")
        module, latents, configs["vae"] = parts.vae_decoder(root, denoiser, sizes.height, sizes.width)
        record("vae_decoder", compile_model(module, os.path.join(tmp, "vae_decoder"),
                                            _side_options(options, component_passes.get("vae", "")),
                                            progress, example_call=(latents,)))
        if name in IMAGE_PIPELINES:
            say(f"{name}: compiling the VAE encoder")
            module, image = parts.vae_encoder(root, denoiser, sizes.height, sizes.width)
            record("vae_encoder", compile_model(module, os.path.join(tmp, "vae_encoder"),
                                                _side_options(options, component_passes.get("vae", "")),
                                                progress, example_call=(image,)))
        shutil.copytree(root / "scheduler", os.path.join(tmp, "scheduler"))
        shutil.copyfile(root / "model_index.json", os.path.join(tmp, "model_index.json"))
        manifest = {
            "genzip_version": __version__,  # also what makes --config ARTIFACT read its "config" section
            "kind": PIPELINE_KIND,
            "pipeline": name,
            "source": str(root.resolve()),
            "components": components,
            "vae": {key: float(configs["vae"][key]) for key in ("scaling_factor", "shift_factor")
                    if configs["vae"].get(key) is not None},
            "configs": configs,
            "id2label": index.get("id2label"),
            # the pipeline's own registered settings (SDXL's force_zeros_for_empty_prompt), as in model_index.json
            "pipeline_options": {k: v for k, v in index.items() if not k.startswith("_") and k != "id2label"
                                 and not (isinstance(v, list) and len(v) == 2)},
            "scheduler": "scheduler",
            "fidelity": fidelity,
            "passes": passes,
        }
        if tokenizers:
            manifest["tokenizer"] = next(iter(tokenizers.values()))  # what artifacts before SD3 held
            manifest["tokenizers"] = tokenizers
        if config is not None:
            manifest["config"] = config
        write_json(os.path.join(tmp, MANIFEST), manifest)
    return manifest
