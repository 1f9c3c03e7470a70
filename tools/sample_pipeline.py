"""``genzip sample PIPELINE_ARTIFACT --labels 207,360 --out image.png``: images from a pipeline artifact.

One PNG per label: ``--out`` itself for one image, ``STEM-<i>.png`` for several. The
pipeline runs as ``genzip.load_pipeline`` opens it (ONNX Runtime components, the
model's own scheduler unless ``--scheduler``), seeded by ``--seed``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from genzip.errors import GenzipError


def image_paths(out: str, count: int) -> list[str]:
    if not out.lower().endswith(".png"):
        raise GenzipError(f"--out {out} is not a .png path", "a pipeline artifact writes images: pass --out image.png")
    if count == 1:
        return [out]
    stem = out[:-4]
    return [f"{stem}-{i}.png" for i in range(count)]


def run_pipeline(args: argparse.Namespace, providers) -> int:
    import numpy as np
    import torch

    from genzip import load_pipeline
    from genzip.runtime.conditioning import parse_labels
    from genzip.runtime.sampler import scheduler_class

    if args.embeds:
        raise GenzipError("a DiTPipeline artifact is conditioned on class labels, not an .npz of embeddings",
                          "pass --labels 207,360")
    labels = parse_labels(args.labels) if args.labels else np.arange(args.batch, dtype=np.int64)
    if labels.size == 0:
        raise GenzipError("--labels names no class", "pass e.g. --labels 207,360")
    paths = image_paths(args.out, len(labels)) if args.out else []
    pipe = load_pipeline(args.artifact, plan=args.plan, providers=providers, threads=args.threads)
    pipe.set_progress_bar_config(disable=args.quiet)
    if args.scheduler is not None:  # the class swapped, the model's noise schedule kept
        pipe.scheduler = scheduler_class(args.scheduler).from_config(pipe.scheduler.config)
    start = time.perf_counter()
    images = pipe(class_labels=labels.tolist(), num_inference_steps=args.steps, guidance_scale=args.cfg,
                  generator=torch.manual_seed(args.seed), output_type="pil").images
    total_ms = (time.perf_counter() - start) * 1e3
    for image, path in zip(images, paths):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        image.save(path)
    summary = {"artifact": args.artifact, "pipeline": "DiTPipeline", "labels": labels.tolist(), "steps": args.steps,
               "cfg": args.cfg, "seed": args.seed, "scheduler": type(pipe.scheduler).__name__, "images": paths,
               "total_ms": total_ms}
    if args.json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    else:
        saved = f", images -> {', '.join(paths)}" if paths else ""
        sys.stdout.write(f"{len(images)} images, {args.steps} steps in {total_ms:.1f} ms{saved}\n")
    return 0
