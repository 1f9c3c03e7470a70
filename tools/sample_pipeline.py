"""``genzip sample PIPELINE_ARTIFACT (--labels 207,360 | --prompt TEXT ...) --out image.png [--grid]``.

Images from a pipeline artifact: class labels for a ``DiTPipeline``, prompts for a text
pipeline (``StableDiffusionPipeline``). One PNG per label or prompt: ``--out`` itself
for one image, ``STEM-<i>.png`` for several; with ``--grid``, one image at ``--out``
holding them all (rows of ``ceil(sqrt(n))``). An image pipeline's artifact
(``StableDiffusionImg2ImgPipeline``, its SD3 and SDXL siblings) transforms ``--image IN.png`` with each prompt
(``--strength``, default diffusers' 0.8); without ``--image`` it samples from noise through
its text-to-image sibling (diffusers' ``AutoPipelineForText2Image.from_pipe``, same
components). The pipeline runs as
``genzip.load_pipeline`` opens it (ONNX Runtime components, the model's own scheduler
unless ``--scheduler``), seeded by ``--seed``.

Invariant: an existing image is never overwritten without ``--force`` (checked before
sampling), and each PNG is written to a temporary sibling and renamed into place.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

from genzip.errors import GenzipError
from genzip.jsonfile import write_atomic


def image_paths(out: str, count: int, grid: bool = False, force: bool = False) -> list[str]:
    """Where the images go (module docstring); refuses existing files without ``force``."""
    if not out.lower().endswith(".png"):
        raise GenzipError(f"--out {out} is not a .png path", "a pipeline artifact writes images: pass --out image.png")
    paths = [out] if count == 1 or grid else [f"{out[:-4]}-{i}.png" for i in range(count)]
    existing = [p for p in paths if os.path.exists(p)]
    if existing and not force:
        raise GenzipError(f"{existing[0]} exists", "pass --force to replace it, or another --out")
    return paths


def grid_image(images: list):
    """The PIL ``images`` (one size) pasted row-major into a ``ceil(sqrt(n))``-column grid."""
    from PIL import Image

    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w, rows * h))
    for i, image in enumerate(images):
        grid.paste(image, ((i % cols) * w, (i // cols) * h))
    return grid


def save_png(image, path: str) -> None:
    """Write ``image`` to ``path`` atomically (temporary sibling, then rename)."""
    write_atomic(path, lambda f: image.save(f, format="PNG"), binary=True, suffix=".png")


def _conditioning(args: argparse.Namespace, pipeline: str) -> dict:
    """The pipeline call's conditioning keyword from ``--labels`` / ``--prompt``."""
    import numpy as np

    from genzip.runtime.conditioning import parse_labels

    if args.embeds:
        raise GenzipError(f"a {pipeline} artifact is conditioned by its own components, not an .npz of embeddings",
                          "pass --prompt TEXT (text pipelines) or --labels 207,360 (DiTPipeline)")
    if pipeline == "DiTPipeline":
        if args.prompt:
            raise GenzipError("a DiTPipeline artifact is class-conditional: it takes no --prompt",
                              "pass --labels 207,360")
        labels = parse_labels(args.labels) if args.labels else np.arange(args.batch, dtype=np.int64)
        if labels.size == 0:
            raise GenzipError("--labels names no class", "pass e.g. --labels 207,360")
        return {"class_labels": labels.tolist()}
    if args.labels:
        raise GenzipError(f"a {pipeline} artifact is text-conditioned: it takes no --labels",
                          "pass --prompt TEXT (repeatable)")
    if not args.prompt:
        raise GenzipError(f"a {pipeline} artifact needs a prompt", "pass --prompt TEXT (repeatable)")
    return {"prompt": list(args.prompt)}


# diffusers' StableDiffusionImg2ImgPipeline.__call__ default
DEFAULT_STRENGTH = 0.8


def input_image(args: argparse.Namespace, manifest: dict, artifact: str) -> dict:
    """The img2img call's ``image`` and ``strength`` from ``--image`` / ``--strength`` (none: {}).
    Refused in one line: an artifact without a VAE encoder, a file PIL cannot read, an image
    whose size is not the one the encoder was exported at, a strength outside (0, 1]."""
    if args.image is None:
        if args.strength is not None:
            raise GenzipError("--strength applies to an input image, and no --image was given",
                              "pass --image IN.png, or drop --strength")
        return {}
    name = manifest["pipeline"]
    if "vae_encoder" not in manifest["components"]:
        raise GenzipError(f"--image needs an image pipeline artifact, and {artifact} holds a {name}",
                          "compile a StableDiffusionImg2ImgPipeline folder, or drop --image")
    strength = DEFAULT_STRENGTH if args.strength is None else args.strength
    if not 0 < strength <= 1:
        raise GenzipError(f"--strength {strength} is outside (0, 1]", "pass e.g. --strength 0.8")
    from PIL import Image, UnidentifiedImageError

    from genzip import jsonfile

    try:
        image = Image.open(args.image).convert("RGB")
    except (OSError, UnidentifiedImageError) as e:
        raise GenzipError(f"--image {args.image} cannot be read as an image ({e})",
                          "pass a PNG or JPEG file") from None
    encoder = jsonfile.read_json(os.path.join(artifact, manifest["components"]["vae_encoder"], "genzip.json"),
                                 "manifest", "recompile the artifact")
    height, width = encoder["inputs"][0]["shape"][2:]
    if image.size != (width, height):
        raise GenzipError(f"--image {args.image} is {image.size[0]}x{image.size[1]}, and this artifact's VAE encoder "
                          f"takes {width}x{height} images",
                          f"resize it to {width}x{height}, or recompile the pipeline with --height/--width "
                          "(latent pixels, 1/8 of the image's)")
    return {"image": image, "strength": strength}


def run_pipeline(args: argparse.Namespace, providers) -> int:
    import torch

    from genzip import load_pipeline
    from genzip.runtime.pipeline import read_pipeline_manifest
    from genzip.runtime.sampler import scheduler_class

    manifest = read_pipeline_manifest(args.artifact)
    name = manifest["pipeline"]
    cond = _conditioning(args, name)
    given_image = input_image(args, manifest, args.artifact)
    count = len(next(iter(cond.values())))
    if args.grid and not args.out:
        raise GenzipError("--grid writes one image at --out, and no --out was given", "pass --out grid.png")
    paths = image_paths(args.out, count, grid=args.grid, force=args.force) if args.out else []
    pipe = load_pipeline(args.artifact, plan=args.plan, providers=providers, threads=args.threads)
    if "Img2Img" in name and not given_image:  # no --image: sample from noise with the same components
        import diffusers

        pipe = diffusers.AutoPipelineForText2Image.from_pipe(pipe)
    pipe.set_progress_bar_config(disable=args.quiet)
    if args.scheduler is not None:  # the class swapped, the model's noise schedule kept
        pipe.scheduler = scheduler_class(args.scheduler).from_config(pipe.scheduler.config)
    start = time.perf_counter()
    # PixArt bins the requested size to its trained aspect ratios: at the default size (square,
    # the export's) the bin is that size itself, and a sample size without bins (a small model)
    # raises, so binning is off: the same images where it applies, and small models run too.
    binning = {"use_resolution_binning": False} if name.startswith("PixArt") else {}
    images = pipe(**cond, **given_image, **binning, num_inference_steps=args.steps, guidance_scale=args.cfg,
                  generator=torch.manual_seed(args.seed), output_type="pil").images
    total_ms = (time.perf_counter() - start) * 1e3
    for image, path in zip([grid_image(images)] if args.grid else images, paths):
        save_png(image, path)
    given = {"labels": cond["class_labels"]} if "class_labels" in cond else {"prompts": cond["prompt"]}
    if given_image:
        given.update(image=args.image, strength=given_image["strength"])
    summary = {"artifact": args.artifact, "pipeline": name, **given, "steps": args.steps,
               "cfg": args.cfg, "seed": args.seed, "scheduler": type(pipe.scheduler).__name__, "images": paths,
               "grid": bool(args.grid), "total_ms": total_ms}
    if args.json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    else:
        saved = f", {'grid' if args.grid else 'images'} -> {', '.join(paths)}" if paths else ""
        sys.stdout.write(f"{len(images)} images, {args.steps} steps in {total_ms:.1f} ms{saved}\n")
    return 0
