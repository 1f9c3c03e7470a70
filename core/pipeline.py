"""``genzip-compile PIPELINE_FOLDER``: a whole diffusers pipeline into one artifact folder.

Supported pipeline classes (``PIPELINES``): ``DiTPipeline`` (class-conditional DiT
transformer, VAE decoder, scheduler). Other pipeline folders keep compiling their
denoiser alone (``genzip.frontend.hf_folder``).

Invariant: the artifact folder is complete or absent (it is staged and renamed);
it holds one sub-artifact per neural component (``transformer/``, ``vae_decoder/``),
each a normal genzip artifact with its own manifest and fidelity gate, plus the
pipeline's ``model_index.json`` and ``scheduler/`` files, and a top-level
``genzip.json`` with ``"kind": "pipeline"`` naming them.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from genzip.backends.artifact import staged_folder, write_json
from genzip.errors import GenzipError
from genzip.runtime.pipeline import MANIFEST, PIPELINE_KIND

PIPELINES = ("DiTPipeline",)


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


def _vae_decoder(folder: Path, height: int | None = None, width: int | None = None):
    """(the VAE's decode as a module, its example latents, its scaling factor); the latents
    are the transformer's size: ``height``/``width`` when given (``--height``), else its config's."""
    import diffusers
    import torch

    vae = diffusers.AutoencoderKL.from_pretrained(str(folder / "vae")).eval()

    class VaeDecoder(torch.nn.Module):
        def __init__(self, vae):
            super().__init__()
            self.vae = vae

        def forward(self, latent):
            return self.vae.decode(latent, return_dict=False)[0]

    transformer = json.loads((folder / "transformer" / "config.json").read_text())
    size = transformer["sample_size"]
    g = torch.Generator().manual_seed(0)
    # Batch 1: the decoder's export is not batch-dynamic (torch.export finds a batch constraint in
    # AutoencoderKL.decode), so OrtVaeDecoder decodes one latent per call.
    latents = torch.randn(1, vae.config.latent_channels, height or size, width or size, generator=g)
    return VaeDecoder(vae).eval(), latents, float(vae.config.scaling_factor)


def compile_pipeline(folder: str, out_dir: str, options, progress: Callable[[str], None] | None = None,
                     config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Compile every neural component of the pipeline ``folder`` into ``out_dir``; return
    the top-level manifest. ``options`` (``CompileOptions``): the pipeline spec and recipe
    apply to the denoiser; the VAE decoder is exported and verified (``dtype`` applies to both)."""
    import dataclasses

    from genzip.compile import CompileOptions, compile_model

    root = Path(folder).expanduser()
    name = pipeline_class(root)
    index = json.loads((root / "model_index.json").read_text())
    for part in ("transformer", "vae", "scheduler"):
        if not (root / part).is_dir():
            raise GenzipError(f"'{root}' is a {name} folder without its '{part}' folder",
                              "pass a folder written by the pipeline's save_pretrained()")
    with staged_folder(out_dir, options.force) as tmp:
        if progress:
            progress(f"{name}: compiling the transformer")
        denoiser = compile_model(str(root / "transformer"), os.path.join(tmp, "transformer"),
                                 dataclasses.replace(options, force=False, reproducer_dir=None), progress, config=config)
        if progress:
            progress(f"{name}: compiling the VAE decoder")
        sizes = options.export_sizes()
        module, latents, scaling = _vae_decoder(root, sizes.height, sizes.width)
        vae_opts = CompileOptions(target=options.target, seed=options.seed, verify=options.verify,
                                  min_cosine=options.min_cosine, providers=options.providers, device=options.device,
                                  dtype=options.dtype)
        decoder = compile_model(module, os.path.join(tmp, "vae_decoder"), vae_opts, progress, example_call=(latents,))
        shutil.copytree(root / "scheduler", os.path.join(tmp, "scheduler"))
        shutil.copyfile(root / "model_index.json", os.path.join(tmp, "model_index.json"))
        manifest = {
            "kind": PIPELINE_KIND,
            "pipeline": name,
            "source": str(root.resolve()),
            "components": {"transformer": "transformer", "vae_decoder": "vae_decoder"},
            "vae": {"scaling_factor": scaling},
            "id2label": index.get("id2label"),
            "scheduler": "scheduler",
            "fidelity": {"transformer": denoiser["fidelity"], "vae_decoder": decoder["fidelity"]},
            "passes": {"transformer": denoiser["passes"], "vae_decoder": decoder["passes"]},
        }
        if config is not None:
            manifest["config"] = config
        write_json(os.path.join(tmp, MANIFEST), manifest)
    return manifest
