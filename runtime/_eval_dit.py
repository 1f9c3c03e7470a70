"""Diffusion figures of ``genzip eval``: samples, class accuracy, Fréchet distance, PSNR / SSIM, grid.

Invariants:

* the artifact and its reference sample with the same conditions, seed, scheduler, step
  count and CFG scale, batch by batch (batch ``b`` seeds its noise with ``seed + b``), so
  their final latents differ only by what the compression (and the plan) changed;
* the reference always runs all-full (no plan): it is the uncompressed trajectory;
* PSNR / SSIM compare the final latents; for ``trained-dit`` (pixel space) the images
  clamped to [-1, 1], what the judge sees;
* real-data figures (accuracy, Fréchet distance) exist only for ``trained-dit`` and
  ``trained-sd3``: their conditions are the held-out split's labels in order (for
  ``trained-sd3`` as captions through its committed text encoder, the empty caption as
  the negative), its samples are clamped to the
  training range [-1, 1] and judged by the committed classifier; the Fréchet distance
  compares the samples' classifier features with those of the held-out real images.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from genzip.errors import GenzipError
from genzip.runtime import _eval_data, conditioning
from genzip.runtime import _image_metrics as metrics
from genzip.runtime.sampler import sample, scheduler_for

BATCH = 8  # images per sampler call (the model sees 2x for CFG)


def _images_per_call(model) -> int:
    batch = next(s for s in model.inputs if s["name"] == "hidden_states")["shape"][0]
    if not isinstance(batch, int):
        return BATCH
    if batch % 2:
        raise GenzipError(f"artifact {model.folder} has a fixed batch of {batch}, which is not a CFG pair batch",
                          "compile the DiT with an even (or dynamic) batch")
    return batch // 2


def conditions(model, n: int, seed: int, preset: str | None) -> tuple[np.ndarray, np.ndarray, str, dict]:
    """(cond, uncond, description, extra) of ``n`` images: held-out labels for the trained DiTs
    (as captions for the caption-conditioned ones, whose pooled states are ``extra``), else
    seeded random (no ``extra``)."""
    if preset in _eval_data.TEXT_DIT_PRESETS:
        cond, uncond, extra = _eval_data.caption_pair(preset, heldout_labels(n))
        described = "captions of the held-out digits' labels (digits split), in split order; negative: ''"
        return cond, uncond, described, extra
    if preset in _eval_data.DIT_PRESETS:
        cond, uncond = conditioning.class_pair(model, heldout_labels(n), "held-out labels")
        return cond, uncond, "held-out digit labels (trained-dit split), in split order", {}
    cond, uncond = conditioning.default_conditioning(model, n, seed)
    kind = "class labels" if conditioning.conditioning_input(model) == conditioning.CLASS else "prompt embeddings"
    return cond, uncond, f"seeded random {kind} (seed {seed}); this model has no held-out conditions", {}


def heldout_labels(n: int) -> np.ndarray:
    """The held-out digits' labels in split order, cycled to ``n`` (more samples than images)."""
    _, labels = _eval_data.heldout_images(n)
    return np.resize(labels, n)


def sample_all(model, cond, uncond, *, steps: int, cfg: float, seed: int, scheduler: str | None,
               scheduler_config: dict | None, bar=None, extra: dict | None = None) -> np.ndarray:
    """Final latents of every condition, in batches of what one call takes (``extra``: the
    (cond, uncond) rows of other per-prompt inputs, batched alike)."""
    per_call = _images_per_call(model)
    out = []
    for b, start in enumerate(range(0, len(cond), per_call)):
        part = slice(start, start + per_call)
        batch_extra = {k: (c[part], u[part]) for k, (c, u) in (extra or {}).items()}
        res = sample(model, cond[part], uncond[part], steps=steps, cfg=cfg, seed=seed + b, scheduler=scheduler,
                     scheduler_config=scheduler_config, extra=batch_extra,
                     progress=(lambda i, n: bar.update(1)) if bar else None)
        out.append(res.latents)
    return np.concatenate(out)


def judged(latents: np.ndarray, labels: np.ndarray, real_features: np.ndarray, judge) -> dict[str, Any]:
    """Class accuracy and Fréchet distance of trained-dit samples (pixel images)."""
    images = np.clip(latents, -1.0, 1.0)
    logits, features = _eval_data.judge_logits_features(judge, images)
    accuracy = float(np.mean(logits.argmax(-1) == labels))
    frechet = metrics.frechet_from_features(features, real_features) if len(features) >= 2 else None
    return {"accuracy": accuracy, "frechet_distance": frechet}


def _to_rgb(latents: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``[N, C, H, W]`` -> ``[N, H, W, 3]`` in [0, 1]: one gray channel, or the first three as RGB."""
    x = np.clip((latents - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
    x = x[:, :3] if x.shape[1] >= 3 else x[:, :1].repeat(3, axis=1)
    return x.transpose(0, 2, 3, 1)


def _tile(images: np.ndarray, cols: int, pad: int) -> np.ndarray:
    n, h, w, _ = images.shape
    rows = -(-n // cols)
    canvas = np.ones((rows * (h + pad) + pad, cols * (w + pad) + pad, 3))
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        canvas[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = img
    return canvas


def write_grid(path: str, latents: np.ndarray, reference: np.ndarray | None, pixel_range: tuple | None,
               limit: int = 32) -> None:
    """PNG of up to ``limit`` samples: the reference's block on the left, the artifact's on the
    right (same conditions in the same cells), both on the reference's value range."""
    import matplotlib.image

    shown = [reference[:limit]] if reference is not None else []
    shown.append(latents[:limit])
    lo, hi = pixel_range or (float(shown[0].min()), float(shown[0].max()))
    cols = min(8, len(shown[-1]))
    blocks = [_tile(_to_rgb(x, lo, hi), cols, pad=2) for x in shown]
    gap = np.ones((blocks[0].shape[0], 6, 3))
    canvas = np.concatenate([blocks[0], gap, blocks[1]], axis=1) if len(blocks) == 2 else blocks[0]
    scale = max(1, 256 // canvas.shape[0])  # tiny latents: upscale (nearest) so the PNG is viewable
    canvas = canvas.repeat(scale, axis=0).repeat(scale, axis=1)
    try:
        matplotlib.image.imsave(path, (canvas * 255).round().astype(np.uint8))
    except OSError as e:
        raise GenzipError(f"cannot write --grid {path}: {e.strerror}", "choose a writable .png path") from None


def evaluate_dit(model, reference, *, samples: int, seed: int, steps: int, cfg: float, scheduler: str | None,
                 preset: str | None, grid: str | None, progress: bool) -> tuple[dict[str, Any], dict[str, str]]:
    """(figures, why) of a DiT artifact ``model`` (a ``PlannedModel``) and optional ``reference``;
    ``why`` names the reason of every figure left ``None``."""
    from tqdm import tqdm

    cond, uncond, described, extra = conditions(model, samples, seed, preset)
    trained = preset in _eval_data.DIT_PRESETS
    # the trained DiTs learned epsilon on their own DDPM betas: DPM-Solver must use them; a flow
    # scheduler has no betas to take (and is a mismatch the user chose).
    schedule = _eval_data.dit_schedule() if trained and scheduler in (None, "dpm") else None
    runs = [("artifact", model)] + ([("reference", reference)] if reference is not None else [])
    per_call = _images_per_call(model)
    total = len(runs) * steps * -(-samples // per_call)
    latents: dict[str, np.ndarray] = {}
    with tqdm(total=total, desc="genzip eval: sampling", unit="step", disable=not progress, leave=False) as bar:
        for name, m in runs:
            latents[name] = sample_all(m, cond, uncond, steps=steps, cfg=cfg, seed=seed, scheduler=scheduler,
                                       scheduler_config=schedule, bar=bar, extra=extra)
    figures: dict[str, Any] = {"conditions": described, "steps": steps, "cfg": cfg,
                               "scheduler": scheduler_for(model, scheduler, schedule)[1],
                               "accuracy": None, "frechet_distance": None, "reference_accuracy": None,
                               "reference_frechet_distance": None, "real_images": None}
    why: dict[str, str] = {}
    if trained:
        judge = _eval_data.judge()
        real, _ = _eval_data.heldout_images(10**9)
        _, real_features = _eval_data.judge_logits_features(judge, real)
        figures["real_images"] = len(real)
        labels = heldout_labels(samples)
        for name in latents:
            key = "" if name == "artifact" else "reference_"
            got = judged(latents[name], labels, real_features, judge)
            figures[f"{key}accuracy"], figures[f"{key}frechet_distance"] = got["accuracy"], got["frechet_distance"]
        if figures["frechet_distance"] is None:
            why["frechet_distance"] = why["reference_frechet_distance"] = "needs at least 2 samples (--samples 2+)"
    else:
        no_data = (f"needs real data and a judge; only trained-dit and trained-sd3 have them (this "
                   f"artifact's preset is {preset or 'none'})")
        for key in ("accuracy", "frechet_distance", "reference_accuracy", "reference_frechet_distance", "real_images"):
            why[key] = no_data
    for key in ("reference_accuracy", "reference_frechet_distance"):
        if reference is None:
            why.setdefault(key, "needs a reference artifact (--vs REFERENCE_ARTIFACT)")
    if reference is not None:
        # trained-dit: compare the images the judge sees (clamped to [-1, 1]); its raw final
        # latents can overshoot that range by orders of magnitude, which would swamp the peak.
        ref, art = latents["reference"], latents["artifact"]
        if trained:
            ref, art = np.clip(ref, -1.0, 1.0), np.clip(art, -1.0, 1.0)
        figures["psnr_db"] = metrics.psnr(ref, art)
        figures["ssim"] = metrics.ssim(ref, art)
    else:
        figures["psnr_db"] = figures["ssim"] = None
        why["psnr_db"] = why["ssim"] = "needs a reference artifact (--vs REFERENCE_ARTIFACT)"
    if grid:
        write_grid(grid, latents["artifact"], latents.get("reference"), (-1.0, 1.0) if trained else None)
    figures["grid"] = grid
    return figures, why
