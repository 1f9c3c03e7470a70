"""Sizes of the non-batch axes an export traces: ``--text-len``, ``--height``/``--width``
(or ``--sample-size``) and ``--seq-len``.

Invariant: an :class:`ExportSizes` holds positive integers or None (None: the model's
own default: the preset's, ``sample_size`` from the config, 77 caption tokens for a
diffusers folder, 32 tokens for a causal-LM folder). Heights and widths are in
*latent* pixels, the ``hidden_states``/``sample`` dims of the denoiser (image pixels
divided by the VAE's factor, 8 for PixArt and SD). :func:`check_diffusers` and
:func:`check_causal_lm` refuse, with one-line errors naming the fix, a size the model
cannot take before anything is exported: a size given to the wrong family, a height
or width that is not a multiple of the patch size (DiTs) or of the down-sampling
factor (UNets), a sequence longer than the position table.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from genzip.errors import GenzipError

FLAGS = {"text_len": "--text-len", "height": "--height", "width": "--width", "seq_len": "--seq-len"}


@dataclasses.dataclass(frozen=True)
class ExportSizes:
    text_len: int | None = None
    height: int | None = None
    width: int | None = None
    seq_len: int | None = None

    def __post_init__(self) -> None:
        for field, flag in FLAGS.items():
            value = getattr(self, field)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise GenzipError(f"{flag} must be a positive integer, got {value!r}", f"pass {flag} 1 or more")

    @classmethod
    def from_settings(cls, *, text_len=None, height=None, width=None, sample_size=None, seq_len=None) -> ExportSizes:
        """``sample_size`` is a square ``height`` = ``width``; giving it with either is an error."""
        if sample_size is not None:
            if height is not None or width is not None:
                raise GenzipError("--sample-size sets both --height and --width, and one of them was given too",
                                  "pass either --sample-size S or --height H --width W")
            height = width = sample_size
        return cls(text_len=text_len, height=height, width=width, seq_len=seq_len)

    def given(self) -> list[str]:
        """The flags set, in CLI spelling (for errors)."""
        return [flag for field, flag in FLAGS.items() if getattr(self, field) is not None]

    def record(self) -> dict[str, int]:
        """The sizes set, for ``source_info`` in the manifest."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


NONE = ExportSizes()


def refuse(sizes: ExportSizes | None, what: str, fix: str) -> None:
    """One-line error when any size is set for a source that cannot take it (``what`` says why)."""
    if sizes is not None and sizes.given():
        raise GenzipError(f"{', '.join(sizes.given())} cannot apply to {what}", fix)


def _cfg(config: Any, key: str, default=None):
    value = config.get(key, default) if hasattr(config, "get") else getattr(config, key, default)
    return default if value is None else value


def spatial_factor(config: Any, class_name: str) -> int:
    """What latent heights and widths must be multiples of: the patch size of a DiT, the
    total down-sampling (2 per down block after the first) of a UNet, else 1."""
    patch = _cfg(config, "patch_size")
    if patch:
        return int(patch)
    blocks = _cfg(config, "down_block_types")
    if "UNet" in class_name and blocks:
        return 2 ** (len(blocks) - 1)
    return 1


def check_diffusers(sizes: ExportSizes | None, module: Any, *, has_text: bool) -> ExportSizes:
    """``sizes`` checked against a diffusers denoiser (see the module docstring)."""
    sizes = sizes or NONE
    name = type(module).__name__
    if sizes.seq_len is not None:
        raise GenzipError(f"--seq-len applies to language models, and {name} is a denoiser",
                          "set its caption length with --text-len and its latent size with --height/--width")
    if sizes.text_len is not None and not has_text:
        raise GenzipError(f"--text-len does not apply: {name} takes no encoder_hidden_states (it is not "
                          "text-conditioned)", "drop --text-len")
    factor = spatial_factor(module.config, name)
    for flag, value in (("--height", sizes.height), ("--width", sizes.width)):
        if value is not None and value % factor:
            low = max(factor, value // factor * factor)
            raise GenzipError(f"{flag} {value} is not a multiple of {factor}, the {name}'s "
                              f"{'patch size' if _cfg(module.config, 'patch_size') else 'down-sampling factor'}",
                              f"pass {flag} {low} or {low + factor} (latent pixels: image pixels / 8)")
    max_patches = _cfg(module.config, "pos_embed_max_size")  # SD3: a cropped position table
    for flag, value in (("--height", sizes.height), ("--width", sizes.width)):
        if max_patches and value is not None and value // factor > int(max_patches):
            raise GenzipError(f"{flag} {value} is over {name}'s position table ({max_patches} patches of {factor})",
                              f"pass {flag} {int(max_patches) * factor} or less")
    return sizes


def check_causal_lm(sizes: ExportSizes | None, module: Any) -> ExportSizes:
    """``sizes`` checked against a transformers causal LM (see the module docstring)."""
    sizes = sizes or NONE
    name = type(module).__name__
    spatial = [f for f in ("--text-len", "--height", "--width") if f in sizes.given()]
    if spatial:
        raise GenzipError(f"{', '.join(spatial)} apply to denoisers, and {name} is a language model",
                          "set its token count with --seq-len")
    limit = _cfg(module.config, "max_position_embeddings")
    if sizes.seq_len is not None and limit and sizes.seq_len > int(limit):
        raise GenzipError(f"--seq-len {sizes.seq_len} is over {name}'s max_position_embeddings ({limit})",
                          f"pass --seq-len {limit} or less")
    return sizes
