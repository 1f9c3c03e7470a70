"""Train a caption-conditioned trained preset (``trained-sd3`` or ``trained-pixart``) on scikit-learn's digits.

Run: ``python -m genzip.frontend.trained.train_captioned --preset trained-sd3 --out frontend/trained/weights/trained-sd3``

Deterministic (seeded, one thread, deterministic kernels): the same command on the
same package versions writes the same weights. The captions ("a handwritten seven",
"the digit seven", "a scan of the number seven") go through a CLIP-style causal text
encoder trained first, contrastively against an image tower (``_clip``), then frozen
while the denoiser learns. Writes the EMA denoiser as a diffusers folder, the text
encoder (``text_encoder/``), the sampler config (``scheduler/``) and ``manifest.json``.
The judge is trained-dit's committed digit classifier (same data, same split).
"""

from __future__ import annotations

import copy
import time

import torch

from genzip.frontend.trained import (
    WEIGHTS,
    _captioned,
    _captions,
    _classifier,
    _clip,
    _digits,
    _dit,
    _manifest,
    _schedule,
)

CAPTION_DROP = 0.1  # share of samples trained on the empty caption, for classifier-free guidance
SAMPLES_PER_CLASS = 10  # FP32 samples per digit judged at the end of training (the manifest figure)
CLIP_STEPS = 1000  # contrastive steps of the text encoder (its loss is flat from about 500)


def caption_table(text_encoder) -> tuple[torch.Tensor, torch.Tensor]:
    """Token states ``[10, len(TEMPLATES) + 1, TEXT_LEN, TEXT_DIM]`` and pooled states
    ``[10, len(TEMPLATES) + 1, TEXT_DIM]`` of every digit's captions, the empty one last."""
    states, pooled = zip(*(
        _captions.encode(text_encoder, [_captions.caption(label, i) for i in range(len(_captions.TEMPLATES))] + [""])
        for label in range(10)))
    return torch.stack(states), torch.stack(pooled)


def captions_of(text_encoder, labels, shift: int = 0):
    return _captions.encode(text_encoder, [_captions.caption((int(y) + shift) % 10, i) for i, y in enumerate(labels)])


def caption_gap(model, images, labels, text_encoder) -> tuple[float, float]:
    """Held-out denoising loss with the right caption and with a wrong one (digit + 3): how
    much the denoiser reads its captions."""
    return (_captioned.denoise_loss(model, images, captions_of(text_encoder, labels)),
            _captioned.denoise_loss(model, images, captions_of(text_encoder, labels, 3)))


def train(preset: str, images, labels, table, *, steps: int, batch: int, seed: int,
          probe=None) -> tuple[torch.nn.Module, float]:
    """The EMA copy of ``preset``'s denoiser trained on ``images`` captioned from ``table``,
    and the smoothed final loss."""
    model = _captioned.build(preset, seed).train()
    ema = copy.deepcopy(model).eval()
    scheduler = _dit.ddpm()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed + 1)
    empty = len(_captions.TEMPLATES)
    states, pooled = table
    running = None
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = _schedule.warmup_cosine(step, steps, 1e-3)
        pick = torch.randint(0, len(labels), (batch,), generator=generator)
        x0, y = images[pick], labels[pick]
        which = torch.randint(0, empty, (batch,), generator=generator)
        which[torch.rand(batch, generator=generator) < CAPTION_DROP] = empty
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=generator)
        eps = _captioned.epsilon(model, scheduler.add_noise(x0, noise, t), t, states[y, which], pooled[y, which])
        loss = (eps - noise).pow(2).mean()
        value = _schedule.ema_step(model, ema, opt, loss, step)
        running = value if running is None else 0.98 * running + 0.02 * value
        if step % 50 == 0 or step == steps - 1:
            print(f"{preset} step {step} loss {value:.4f} smoothed {running:.4f}", flush=True)
        if probe is not None and (step + 1) % 250 == 0:
            print(f"{preset} step {step + 1} held-out loss right/wrong caption {probe(ema)}", flush=True)
    return ema, running


def main(argv: list[str] | None = None) -> None:
    parser = _schedule.trainer_parser(__doc__, steps=2000)  # the committed trained-sd3's steps
    parser.add_argument("--preset", choices=sorted(_captioned.MODELS), default="trained-sd3")
    args = parser.parse_args(argv)
    _schedule.reproducible()
    start = time.time()

    train_x, train_y = _digits.load("train")
    held_x, held_y = _digits.load("heldout")
    text_encoder, clip_loss = _clip.train(_captions.build_text_encoder(args.seed + 7), train_x, train_y,
                                          _captions.caption, _captions.tokenize, steps=CLIP_STEPS, seed=args.seed + 7)
    print(f"text encoder: contrastive loss {clip_loss:.4f} after {CLIP_STEPS} steps", flush=True)
    probe_x, probe_y = held_x[:64], held_y[:64]
    model, final_loss = train(args.preset, train_x, train_y, caption_table(text_encoder), steps=args.steps,
                              batch=args.batch, seed=args.seed,
                              probe=lambda m: caption_gap(m, probe_x, probe_y, text_encoder))
    train_seconds = time.time() - start

    judge = _classifier.load(WEIGHTS / "trained-dit" / _classifier.WEIGHTS)
    want = torch.arange(10).repeat_interleave(SAMPLES_PER_CLASS)
    negative = _captions.encode(text_encoder, [""])
    samples = _captioned.sample(model, captions_of(text_encoder, want), negative, steps=20, cfg=4.0, seed=args.seed)
    sample_acc = _classifier.accuracy(judge, samples, want)
    trained_loss, wrong_loss = caption_gap(model, held_x, held_y, text_encoder)
    random_loss = _captioned.denoise_loss(_captioned.build(args.preset, args.seed + 100).eval(), held_x,
                                          captions_of(text_encoder, held_y))
    states = _captions.encode(text_encoder, [""] * 2 + [_captions.caption(d, 0) for d in range(10)])[0]
    # MixDQ's premise: token 0 (BOS, the same in every caption) outgrows the other tokens.
    bos_ratio = float(states[:, 0].abs().max() / states[:, 1:].abs().max())
    print(f"sample accuracy {sample_acc:.4f}; held-out denoise loss {trained_loss:.4f} (wrong caption "
          f"{wrong_loss:.4f}) vs random {random_loss:.4f}; token-0 max|x| ratio {bos_ratio:.3f}")

    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(args.out), safe_serialization=True)
    text_encoder.save_pretrained(str(args.out / _captions.TEXT_ENCODER), safe_serialization=True)
    _dit.dpm_solver().save_pretrained(str(args.out / "scheduler"))
    cls, config = _captioned.MODELS[args.preset]
    _manifest.write_manifest(args.out, {
        "preset": args.preset,
        "class": f"diffusers.{cls}",
        "config": config,
        "text_encoder": {"class": "transformers.CLIPTextModelWithProjection", "config": _captions.TEXT_CONFIG,
                         "seed": args.seed + 7, "trained": f"CLIP-style contrastive, {CLIP_STEPS} steps, then frozen",
                         "contrastive_loss": clip_loss, "token0_max_ratio": bos_ratio,
                         "vocab": list(_captions.VOCAB), "templates": list(_captions.TEMPLATES),
                         "text_len": _captions.TEXT_LEN},
        "schedule": _captioned.SCHEDULE,
        "data": _digits.data_record(),
        "split": _digits.SPLIT_RULE,
        "steps": args.steps, "batch": args.batch, "seed": args.seed, "caption_drop": CAPTION_DROP,
        "final_loss": final_loss,
        "train_seconds": round(train_seconds, 1),
        "quality": {
            "sample_class_accuracy": sample_acc,
            "sampler": "DPMSolverMultistepScheduler, 20 steps, CFG 4.0, FP32, negative = empty caption",
            "samples": len(want),
            "judge": "trained-dit/classifier.safetensors",
            "heldout_denoise_loss": trained_loss,
            "heldout_denoise_loss_wrong_caption": wrong_loss,
            "random_init_denoise_loss": random_loss,
            "denoise_timesteps": list(_captioned.EVAL_TIMESTEPS),
        },
    })


if __name__ == "__main__":
    main()
