"""The trained-pixart model: a text-conditioned PixArt DiT and its frozen CLIP-style text encoder.

Invariants:

* the denoiser is a diffusers ``PixArtTransformer2DModel`` on 1x32x32 pixel images in
  [-1, 1] (patch 2 -> 256 tokens) with the trained-dit noise schedule; its output has 2
  channels in the learned-sigma layout (channel 0 = epsilon, the only one trained);
* it is conditioned on ``encoder_hidden_states`` ``[B, TEXT_LEN, TEXT_DIM]``: the last
  hidden state of a transformers ``CLIPTextModelWithProjection`` (causal, CLIP's
  architecture) trained CLIP-style first (``_clip``: contrastive against an image tower on
  the same digits) and then frozen while the denoiser learns. Captions are word-tokenized with the fixed
  ``VOCAB``: ``<bos> words <eos>`` padded with ``<eos>`` to ``TEXT_LEN``, as Stable
  Diffusion pads CLIP's. Because the encoder is causal, token 0 (``<bos>``) has the same
  embedding in every caption (the empty caption included): MixDQ's prompt-invariant BOS;
* the unconditional caption is the empty one (``<bos> <eos> ...``), trained by dropping
  ``CAPTION_DROP`` of the captions, so CFG's negative embedding is ``encode([""])``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from genzip.frontend.trained import _dit

TEXT_LEN = 8
TEXT_DIM = 64
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Three phrasings, so the denoiser reads a sentence, not a class id at a fixed position.
TEMPLATES = ("a handwritten {}", "the digit {}", "a scan of the number {}")
VOCAB = ("<bos>", "<eos>", "a", "handwritten", "the", "digit", "scan", "of", "number", *DIGITS)
BOS, EOS = 0, 1
TEXT_ENCODER = "text_encoder"  # subfolder of the weights folder (config.json + model.safetensors)

CONFIG = dict(
    num_layers=4, num_attention_heads=4, attention_head_dim=24, in_channels=1, out_channels=2,
    patch_size=2, sample_size=32, cross_attention_dim=96, caption_channels=TEXT_DIM,
    norm_type="ada_norm_single", use_additional_conditions=False,
)
TEXT_CONFIG = dict(
    vocab_size=len(VOCAB), hidden_size=TEXT_DIM, intermediate_size=4 * TEXT_DIM, num_hidden_layers=2,
    num_attention_heads=4, max_position_embeddings=TEXT_LEN, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=EOS,
    projection_dim=TEXT_DIM,
)
SCHEDULE = _dit.SCHEDULE
EVAL_TIMESTEPS = _dit.EVAL_TIMESTEPS


def caption(label: int, index: int) -> str:
    """The caption of sample ``index`` showing digit ``label`` (templates cycle with the index)."""
    return TEMPLATES[index % len(TEMPLATES)].format(DIGITS[label])


def tokenize(captions: list[str]) -> torch.Tensor:
    """int64 ``[N, TEXT_LEN]``: ``<bos> words <eos>`` padded with ``<eos>``; unknown words are an error."""
    rows = []
    for text in captions:
        words = text.split()
        unknown = [w for w in words if w not in VOCAB]
        if unknown or len(words) + 2 > TEXT_LEN:
            raise ValueError(f"caption {text!r} has unknown words {unknown} or more than {TEXT_LEN - 2} words")
        ids = [BOS, *(VOCAB.index(w) for w in words), EOS]
        rows.append(ids + [EOS] * (TEXT_LEN - len(ids)))
    return torch.tensor(rows, dtype=torch.int64)


def build_text_encoder(seed: int):
    """The CLIP-style causal text encoder at its seeded initialisation (``_clip.train`` trains it)."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    return CLIPTextModelWithProjection(CLIPTextConfig(**TEXT_CONFIG)).eval()


@torch.no_grad()
def encode(text_encoder, captions: list[str]) -> torch.Tensor:
    """``encoder_hidden_states`` float32 ``[N, TEXT_LEN, TEXT_DIM]`` of ``captions``."""
    return text_encoder(input_ids=tokenize(captions)).last_hidden_state.float()


def build(seed: int):
    import diffusers

    torch.manual_seed(seed)
    return diffusers.PixArtTransformer2DModel(**CONFIG)


def load(folder: str | Path):
    """The committed trained-pixart denoiser as an eval-mode FP32 ``PixArtTransformer2DModel``."""
    from diffusers import PixArtTransformer2DModel

    return PixArtTransformer2DModel.from_pretrained(str(folder)).eval()


def load_text_encoder(folder: str | Path):
    from transformers import CLIPTextModelWithProjection

    return CLIPTextModelWithProjection.from_pretrained(str(Path(folder) / TEXT_ENCODER)).eval().requires_grad_(False)


def epsilon(model, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    cond = {"resolution": None, "aspect_ratio": None}
    return model(x, encoder_hidden_states=text, timestep=t, added_cond_kwargs=cond).sample[:, :1]


@torch.no_grad()
def denoise_loss(model, images: torch.Tensor, text: torch.Tensor, *, seed: int = 0) -> float:
    """Mean epsilon MSE over ``EVAL_TIMESTEPS`` with seeded noise (same noise for any model)."""
    scheduler = _dit.ddpm()
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for step in EVAL_TIMESTEPS:
        noise = torch.randn(images.shape, generator=generator)
        t = torch.full((len(images),), step, dtype=torch.int64)
        losses.append(float((epsilon(model, scheduler.add_noise(images, noise, t), t, text) - noise).pow(2).mean()))
    return sum(losses) / len(losses)


@torch.no_grad()
def sample(model, text: torch.Tensor, negative: torch.Tensor, *, steps: int = 20, cfg: float = 4.0,
           seed: int = 0) -> torch.Tensor:
    """Images (N, 1, 32, 32) in [-1, 1] for caption embeddings ``text`` (negatives ``negative``)."""
    scheduler = _dit.dpm_solver()
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((len(text), 1, 32, 32), generator=generator)
    both = torch.cat([text, negative.expand_as(text)])
    for t in scheduler.timesteps:
        eps = epsilon(model, torch.cat([x, x]), t.expand(2 * len(text)), both)
        cond, uncond = eps.chunk(2)
        x = scheduler.step(uncond + cfg * (cond - uncond), t, x).prev_sample
    return x.clamp(-1.0, 1.0)


class CaptionEmbedder:
    """``(batch, seed) -> encoder_hidden_states [batch, TEXT_LEN, TEXT_DIM]`` of the committed
    text encoder in ``folder``: the CFG layout the sampler feeds (first half the empty caption,
    second half captions of seeded random digits; an odd batch is all captions). Used for the
    preset's example inputs and calibration, so both carry the prompt-invariant BOS row."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._encoder = None

    def __call__(self, batch: int, seed: int) -> torch.Tensor:
        if self._encoder is None:
            self._encoder = load_text_encoder(self.folder)
        generator = torch.Generator().manual_seed(seed)
        empty = batch // 2 if batch % 2 == 0 else 0
        labels = torch.randint(0, len(DIGITS), (batch - empty,), generator=generator)
        texts = [""] * empty + [caption(int(y), seed + i) for i, y in enumerate(labels)]
        return encode(self._encoder, texts)
