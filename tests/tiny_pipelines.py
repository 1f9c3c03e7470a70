"""Tiny random diffusers text-to-image pipelines built offline, tokenizers included (no downloads).

``clip_tokenizer`` writes a byte-level BPE vocabulary (every byte symbol, alone and
word-final, the specials, and the merges of a few words) that ``CLIPTokenizer`` loads;
``stable_diffusion`` saves a ``StableDiffusionPipeline`` with a 1-block-per-level UNet,
a 1-layer CLIP text encoder and a 2-block VAE. ``t5_tokenizer`` builds a tokenizers
Unigram model over ``WORDS`` (letters as fallback pieces) that ``T5TokenizerFast``
loads from its ``tokenizer.json``; ``pixart`` saves a ``PixArtAlphaPipeline`` with a
1-layer PixArt transformer, a 1-layer T5 encoder and the same VAE.
"""

from __future__ import annotations

import json
from pathlib import Path

WORDS = ("a", "cat", "dog", "photo", "of", "the", "red", "blue")


def _byte_symbols() -> list[str]:
    """GPT-2's byte-to-unicode table, the alphabet of CLIP's byte-level BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def clip_tokenizer(folder: Path, max_length: int = 77):
    """A CLIPTokenizer over ``WORDS`` (any other text falls back to bytes), saved to ``folder``."""
    import transformers

    symbols = _byte_symbols()
    vocab = symbols + [s + "</w>" for s in symbols]
    merges = []
    for word in WORDS:  # merge each word left to right, the last merge word-final
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            merges.append(f"{pieces[0]} {pieces[1]}")
            merged = pieces[0] + pieces[1]
            if merged not in vocab:
                vocab.append(merged)
            pieces = [merged] + pieces[2:]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    tok = transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                                     model_max_length=max_length, pad_token="<|endoftext|>")
    return tok


def _vae():
    import diffusers

    return diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1, latent_channels=4,
        norm_num_groups=4, sample_size=16).eval()


def t5_tokenizer(max_length: int = 120):
    """A T5TokenizerFast: a Unigram model over ``WORDS`` and single letters, ``</s>`` appended."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [("\u2581" + w, -1.0) for w in WORDS] + [(c, -3.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    return transformers.T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>",
                                        pad_token="<pad>", extra_ids=0, model_max_length=max_length)


def pixart(folder: Path):
    """Save a tiny random PixArtAlphaPipeline (DPM-Solver++ scheduler) to ``folder``; return it.
    Its sample size (8) has no resolution bins: call it with ``use_resolution_binning=False``."""
    import diffusers
    import torch
    import transformers

    torch.manual_seed(0)
    tokenizer = t5_tokenizer()
    text_encoder = transformers.T5EncoderModel(transformers.T5Config(
        vocab_size=len(tokenizer), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id))
    transformer = diffusers.PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=1, sample_size=8,
        patch_size=2, cross_attention_dim=16, caption_channels=16, norm_type="ada_norm_single",
        norm_num_groups=4)
    pipe = diffusers.PixArtAlphaPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder.eval(), vae=_vae(), transformer=transformer.eval(),
        scheduler=diffusers.DPMSolverMultistepScheduler())
    pipe.save_pretrained(folder)
    return pipe


def stable_diffusion(folder: Path, text_len: int = 77, img2img: bool = False):
    """Save a tiny random StableDiffusionPipeline (DDIM scheduler) to ``folder``; return it.
    ``img2img``: the same components as a StableDiffusionImg2ImgPipeline."""
    import diffusers
    import torch
    import transformers

    torch.manual_seed(0)
    tokenizer = clip_tokenizer(folder.parent / f"{folder.name}-tokenizer", max_length=text_len)
    text_encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=text_len, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=4)
    cls = diffusers.StableDiffusionImg2ImgPipeline if img2img else diffusers.StableDiffusionPipeline
    pipe = cls(
        vae=_vae(), text_encoder=text_encoder.eval(), tokenizer=tokenizer, unet=unet.eval(),
        scheduler=diffusers.DDIMScheduler(beta_schedule="scaled_linear"), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return pipe


def _clip_with_projection(tokenizer, hidden: int, projection: int, text_len: int):
    import transformers

    return transformers.CLIPTextModelWithProjection(transformers.CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=2, projection_dim=projection, max_position_embeddings=text_len,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)).eval()


def stable_diffusion_3(folder: Path, text_len: int = 77, img2img: bool = False):
    """Save a tiny random StableDiffusion3Pipeline (``img2img``: the same components as a
    StableDiffusion3Img2ImgPipeline) to ``folder``; return it. Two 2-layer CLIP
    encoders with projections (SD3 reads the penultimate hidden state, so one layer would give
    the bare embeddings), a 1-layer T5 encoder, a 1-layer SD3 transformer (joint attention,
    pooled projections), the 2-block VAE with SD3's shift factor, flow-matching Euler."""
    import diffusers
    import torch
    import transformers

    torch.manual_seed(0)
    tokenizer = clip_tokenizer(folder.parent / f"{folder.name}-tokenizer", max_length=text_len)
    tokenizer_3 = t5_tokenizer(max_length=256)
    text_encoder_3 = transformers.T5EncoderModel(transformers.T5Config(
        vocab_size=len(tokenizer_3), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
        pad_token_id=tokenizer_3.pad_token_id, eos_token_id=tokenizer_3.eos_token_id)).eval()
    transformer = diffusers.SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=16, caption_projection_dim=16, pooled_projection_dim=16, out_channels=4,
        pos_embed_max_size=8).eval()
    vae = _vae()
    vae.register_to_config(scaling_factor=1.5305, shift_factor=0.0609)
    cls = diffusers.StableDiffusion3Img2ImgPipeline if img2img else diffusers.StableDiffusion3Pipeline
    pipe = cls(
        transformer=transformer, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
        text_encoder=_clip_with_projection(tokenizer, 8, 8, text_len), tokenizer=tokenizer,
        text_encoder_2=_clip_with_projection(tokenizer, 8, 8, text_len), tokenizer_2=tokenizer,
        text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3)
    pipe.save_pretrained(folder)
    return pipe


def stable_diffusion_xl(folder: Path, text_len: int = 77, img2img: bool = False):
    """Save a tiny random StableDiffusionXLPipeline (``img2img``: the same components as a
    StableDiffusionXLImg2ImgPipeline) to ``folder``; return it. A 2-layer
    ``CLIPTextModel`` and a 2-layer ``CLIPTextModelWithProjection`` (SDXL reads both
    penultimate states, concatenated, and the second's pooled projection), the SD UNet with
    SDXL's ``text_time`` added conditions (``text_embeds``, 6 ``time_ids``), the 2-block VAE,
    Euler discrete."""
    import diffusers
    import torch
    import transformers

    torch.manual_seed(0)
    tokenizer = clip_tokenizer(folder.parent / f"{folder.name}-tokenizer", max_length=text_len)
    text_encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=text_len, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)).eval()
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=4, addition_embed_type="text_time",
        addition_time_embed_dim=4, projection_class_embeddings_input_dim=8 + 6 * 4).eval()
    cls = diffusers.StableDiffusionXLImg2ImgPipeline if img2img else diffusers.StableDiffusionXLPipeline
    pipe = cls(
        vae=_vae(), text_encoder=text_encoder, text_encoder_2=_clip_with_projection(tokenizer, 8, 8, text_len),
        tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet,
        scheduler=diffusers.EulerDiscreteScheduler(beta_schedule="scaled_linear"))
    pipe.save_pretrained(folder)
    return pipe


def assert_img2img_and_text_match(out: str, folder: str, img2img_cls, text_cls, *, img2img_prompts: list[str],
                                  text_call: dict):
    """genzip.load_pipeline(out) against the PyTorch pipeline saved in ``folder``, same seed:
    img2img of two random 16x16 images (3 steps, strength 0.8), then text-to-image with
    ``text_call`` on both pipelines' components (the text class built from them). Each pair of
    images has one image per prompt, agrees within 1e-3 and is not flat. Returns the genzip
    text-to-image pipeline."""
    import numpy as np
    import torch

    import genzip

    img2img = genzip.load_pipeline(out, providers="cpu")
    assert isinstance(img2img, img2img_cls)
    reference = img2img_cls.from_pretrained(folder)
    pipes = [img2img, reference, text_cls(**img2img.components), text_cls(**reference.components)]
    for p in pipes:
        p.set_progress_bar_config(disable=True)
    image = torch.rand(2, 3, 16, 16, generator=torch.manual_seed(1))
    call = dict(prompt=img2img_prompts, image=image, strength=0.8, num_inference_steps=3, output_type="np")
    edited = [p(generator=torch.manual_seed(0), **call).images for p in pipes[:2]]
    text = [p(generator=torch.manual_seed(0), output_type="np", **text_call).images for p in pipes[2:]]
    for (got, want), n in ((edited, len(img2img_prompts)), (text, len(text_call["prompt"]))):
        assert got.shape == want.shape == (n, 16, 16, 3)
        assert np.abs(got - want).max() < 1e-3 and want.std() > 0.05
    return pipes[2]
