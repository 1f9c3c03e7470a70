"""The digit captions of the caption-conditioned trained presets and their CLIP-style text encoder.

Invariants:

* captions are word-tokenized with the fixed ``VOCAB``: ``<bos> words <eos>`` padded with
  ``<eos>`` to ``TEXT_LEN``, as Stable Diffusion pads CLIP's;
* the encoder is a transformers ``CLIPTextModelWithProjection`` (causal, CLIP's
  architecture), trained CLIP-style (``_clip``: contrastive against an image tower on the
  digits) and then frozen while a denoiser learns. It gives the token states
  ``[N, TEXT_LEN, TEXT_DIM]`` (``last_hidden_state``, after the final LayerNorm) and the
  pooled, projected EOS state ``[N, TEXT_DIM]`` (``text_embeds``, what SD3 feeds its adaLN);
* because the encoder is causal, token 0 (``<bos>``) has the same state in every caption,
  the empty one included: MixDQ's prompt-invariant BOS;
* the unconditional caption is the empty one (``<bos> <eos> ...``).
"""

from __future__ import annotations

from pathlib import Path

import torch

TEXT_LEN = 8
TEXT_DIM = 64
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Three phrasings, so the denoiser reads a sentence, not a class id at a fixed position.
TEMPLATES = ("a handwritten {}", "the digit {}", "a scan of the number {}")
VOCAB = ("<bos>", "<eos>", "a", "handwritten", "the", "digit", "scan", "of", "number", *DIGITS)
BOS, EOS = 0, 1
TEXT_ENCODER = "text_encoder"  # subfolder of the weights folder (config.json + model.safetensors)
TEXT_CONFIG = dict(
    vocab_size=len(VOCAB), hidden_size=TEXT_DIM, intermediate_size=4 * TEXT_DIM, num_hidden_layers=2,
    num_attention_heads=4, max_position_embeddings=TEXT_LEN, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=EOS,
    projection_dim=TEXT_DIM,
)


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


def load_text_encoder(folder: str | Path):
    from transformers import CLIPTextModelWithProjection

    return CLIPTextModelWithProjection.from_pretrained(str(Path(folder) / TEXT_ENCODER)).eval().requires_grad_(False)


@torch.no_grad()
def encode(text_encoder, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(token states float32 ``[N, TEXT_LEN, TEXT_DIM]``, pooled ``[N, TEXT_DIM]``) of ``captions``."""
    out = text_encoder(input_ids=tokenize(captions))
    return out.last_hidden_state.float(), out.text_embeds.float()


class CaptionEmbedder:
    """``(batch, seed) -> (token states, pooled)`` of the committed text encoder in ``folder``:
    the CFG layout the sampler feeds (first half the empty caption, second half captions of
    seeded random digits; an odd batch is all captions). Used for the presets' example
    inputs and calibration, so both carry the prompt-invariant BOS row."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._encoder = None

    def __call__(self, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._encoder is None:
            self._encoder = load_text_encoder(self.folder)
        generator = torch.Generator().manual_seed(seed)
        empty = batch // 2 if batch % 2 == 0 else 0
        labels = torch.randint(0, len(DIGITS), (batch - empty,), generator=generator)
        texts = [""] * empty + [caption(int(y), seed + i) for i, y in enumerate(labels)]
        return encode(self._encoder, texts)

    def forward_inputs(self, kwargs: dict, batch: int, seed: int) -> dict:
        """The denoiser's forward keywords this encoding fills: the token states, and the pooled
        state where the forward takes one (``kwargs`` has SD3's ``pooled_projections``)."""
        states, pooled = self(batch, seed)
        got = {"encoder_hidden_states": states}
        if "pooled_projections" in kwargs:
            got["pooled_projections"] = pooled
        return got
