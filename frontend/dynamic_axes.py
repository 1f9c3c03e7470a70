"""Which non-batch axes an export keeps dynamic: ``--dynamic-axes none|auto|text,size,seq``.

Invariant: a :class:`DynamicAxes` request is ``none`` (every non-batch axis static, the
default), ``auto`` (each axis the model and the pipeline allow, the rest static, silently)
or an explicit list of axis kinds, each with an optional ``=MIN:MAX`` range; an explicit
axis the model or a pass cannot keep dynamic is a one-line error naming it. A planned
:class:`Axis` satisfies ``min <= opt <= max``, all multiples of ``multiple``, where
``opt`` is the traced size (``--text-len`` & co. or the model's default).

Kinds and the inputs they cover (top-level keyword inputs of the example call):

* ``text``: the caption axis, ``encoder_hidden_states`` and ``encoder_attention_mask``
  axis 1 (ONNX dim ``text_len``); default range 1 .. max(512, traced);
* ``size``: latent height and width, ``hidden_states``/``sample`` axes 2 and 3 (dims
  ``height``, ``width``, latent pixels, multiples of the patch size or down-sampling
  factor); default range one factor .. the position table (``pos_embed_max_size``) or 4x
  the traced size;
* ``seq``: the token axis of a causal LM, ``input_ids`` (and ``attention_mask``,
  ``position_ids``) axis 1 (dim ``seq_len``); default range 1 .. ``max_position_embeddings``
  (or 4x the traced length).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from typing import Any

from genzip.errors import GenzipError

KINDS = ("text", "size", "seq")
_WHAT = {"text": "caption length", "size": "latent height/width", "seq": "sequence length"}
_INPUTS = {
    "text": (("encoder_hidden_states", 1, "text_len"), ("encoder_attention_mask", 1, "text_len")),
    "size": (("hidden_states", 2, "height"), ("hidden_states", 3, "width"),
             ("sample", 2, "height"), ("sample", 3, "width")),
    "seq": (("input_ids", 1, "seq_len"), ("attention_mask", 1, "seq_len"), ("position_ids", 1, "seq_len")),
}
_SYNTAX = "write --dynamic-axes none, auto, or a list of text, size, seq each with an optional =MIN:MAX (text=1:120)"
TEXT_MAX = 512  # default longest caption (T5's tokenizer limit in PixArt pipelines)


@dataclasses.dataclass(frozen=True)
class DynamicAxes:
    """A parsed ``--dynamic-axes`` value (see the module docstring)."""

    mode: str = "none"  # "none" | "auto" | "list"
    ranges: Mapping[str, tuple[int, int] | None] = dataclasses.field(default_factory=dict)  # mode "list"
    static: frozenset[str] = frozenset()  # kinds auto keeps static (a pass needs them static)

    @classmethod
    def parse(cls, spec: str | None) -> DynamicAxes:
        text = (spec or "none").strip()
        if text in ("none", "auto"):
            return cls(mode=text)
        ranges: dict[str, tuple[int, int] | None] = {}
        for item in (i.strip() for i in text.split(",")):
            kind, sep, bounds = item.partition("=")
            if kind not in KINDS:
                raise GenzipError(f"--dynamic-axes '{text}': '{kind}' is not an axis kind", _SYNTAX)
            if kind in ranges:
                raise GenzipError(f"--dynamic-axes '{text}' names {kind} twice", "give each axis once")
            ranges[kind] = _bounds(kind, bounds, text) if sep else None
        return cls(mode="list", ranges=ranges)

    @property
    def explicit(self) -> bool:
        return self.mode == "list"

    def kinds(self) -> tuple[str, ...]:
        """The kinds to try dynamic (auto: all but those kept static)."""
        if self.mode == "list":
            return tuple(self.ranges)
        return tuple(k for k in KINDS if k not in self.static) if self.mode == "auto" else ()

    def keep_static(self, kinds: Iterable[str]) -> DynamicAxes:
        return dataclasses.replace(self, static=self.static | frozenset(kinds))


NONE = DynamicAxes()


def refuse_axes(request: DynamicAxes | None, what: str) -> None:
    """One-line error when axes are explicitly asked dynamic for a source whose shapes are fixed
    (``auto`` asks nothing of it)."""
    if request is not None and request.explicit:
        raise GenzipError(f"--dynamic-axes {','.join(request.ranges)} cannot apply to {what}",
                          "drop --dynamic-axes (or use --dynamic-axes auto)")


def _bounds(kind: str, text: str, spec: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", text)
    if not match:
        raise GenzipError(f"--dynamic-axes '{spec}': '{kind}={text}' is not a MIN:MAX range", _SYNTAX)
    lo, hi = int(match[1]), int(match[2])
    if not 1 <= lo <= hi:
        raise GenzipError(f"--dynamic-axes '{spec}': {kind}={lo}:{hi} needs 1 <= MIN <= MAX", _SYNTAX)
    return lo, hi


def describe(kinds: Iterable[str]) -> str:
    """'caption length (text)' style words for errors."""
    return ", ".join(f"{_WHAT[k]} ({k})" for k in kinds)


@dataclasses.dataclass(frozen=True)
class Axis:
    """One dynamic ONNX dim: ``dim`` on every ``(input, axis)`` of ``inputs``."""

    kind: str
    dim: str  # the ONNX dim name
    inputs: tuple[tuple[str, int], ...]
    min: int
    opt: int
    max: int
    multiple: int = 1

    def record(self) -> dict[str, Any]:
        """The manifest's ``source_info.dynamic_sizes`` entry."""
        return {"kind": self.kind, "min": self.min, "opt": self.opt, "max": self.max, "multiple": self.multiple,
                "inputs": {name: axis for name, axis in self.inputs}}

    def other(self) -> int:
        """A second size in range to verify the export at: about half the traced one, else more."""
        half = max(self.min, self.opt // 2 // self.multiple * self.multiple)
        if half != self.opt and half >= self.multiple:
            return half
        return min(self.max, self.opt + self.multiple)


def _cfg(config: Any, key: str):
    if config is None:
        return None
    return config.get(key) if hasattr(config, "get") else getattr(config, key, None)


def _default_range(kind: str, opt: int, multiple: int, module: Any) -> tuple[int, int]:
    config = getattr(module, "config", None)
    if kind == "text":
        return 1, max(TEXT_MAX, opt)
    if kind == "seq":
        limit = _cfg(config, "max_position_embeddings")
        return 1, int(limit) if limit else 4 * opt
    table = _cfg(config, "pos_embed_max_size")  # SD3: a cropped position table bounds the latent
    return multiple, int(table) * multiple if table else 4 * opt


def plan(request: DynamicAxes, module: Any, shapes: Mapping[str, tuple[int, ...]], what: str) -> list[Axis]:
    """The axes to export dynamic for ``request``, given the example call's top-level
    input shapes; an explicit axis the model has no input for, or a range that misses the
    traced size or the patch multiple, is a one-line error (``auto``: skipped)."""
    from genzip.frontend.export_sizes import spatial_factor

    axes: list[Axis] = []
    for kind in request.kinds():
        found: dict[str, list[tuple[str, int]]] = {}
        for name, axis, dim in _INPUTS[kind]:
            if name in shapes and len(shapes[name]) > axis:
                found.setdefault(dim, []).append((name, axis))
        if not found:
            if request.explicit:
                names = sorted({n for n, _, _ in _INPUTS[kind]})
                raise GenzipError(f"--dynamic-axes {kind}: {what} has no {_WHAT[kind]} axis (no input "
                                  f"{' / '.join(names)})", f"drop {kind} from --dynamic-axes")
            continue
        multiple = spatial_factor(getattr(module, "config", None) or {}, type(module).__name__) \
            if kind == "size" else 1
        for dim, inputs in found.items():
            opt = shapes[inputs[0][0]][inputs[0][1]]
            given = request.ranges.get(kind) if request.explicit else None
            lo, hi = given or _default_range(kind, opt, multiple, module)
            if not lo <= opt <= hi:
                raise GenzipError(f"--dynamic-axes {kind}={lo}:{hi} does not include the traced {dim} {opt}",
                                  f"widen the range to include {opt}, or trace at a size inside it")
            if lo % multiple or hi % multiple:
                raise GenzipError(f"--dynamic-axes {kind}={lo}:{hi}: {dim} must be a multiple of {multiple} "
                                  f"(the {type(module).__name__}'s patch size or down-sampling factor)",
                                  f"pass {kind}={-(-lo // multiple) * multiple}:{hi // multiple * multiple}")
            axes.append(Axis(kind, dim, tuple(inputs), lo, opt, hi, multiple))
    return axes


def export_dims(axes: Iterable[Axis]) -> dict[str, dict[int, Any]]:
    """``{input name: {axis: torch.export.Dim}}`` for ``axes`` (a patch multiple becomes
    ``multiple * Dim``, so torch.export knows the axis only takes multiples)."""
    import torch

    out: dict[str, dict[int, Any]] = {}
    for a in axes:
        if a.multiple > 1:
            dim = a.multiple * torch.export.Dim(f"{a.dim}_patches", min=a.min // a.multiple,
                                                max=a.max // a.multiple)
        else:
            dim = torch.export.Dim(a.dim, min=a.min, max=a.max)
        for name, axis in a.inputs:
            out.setdefault(name, {})[axis] = dim
    return out


def named_in(error: BaseException, axes: Iterable[Axis]) -> set[str]:
    """Kinds whose dims torch.export names in ``error`` ("Constraints violated (height, width)")."""
    text = str(error)
    return {a.kind for a in axes if re.search(rf"\b{a.dim}(_patches)?\b", text)}


def resized(call, axes: Iterable[Axis]):
    """``call`` with each axis set to :meth:`Axis.other` on every input it covers: sliced
    when shorter, extended with the axis' mirror image when longer (values stay plausible:
    a mask keeps its ones and zeros)."""
    import torch

    args, kwargs = call
    kwargs = dict(kwargs)
    for a in axes:
        size = a.other()
        for name, axis in a.inputs:
            x = kwargs[name]
            while x.shape[axis] < size:
                x = torch.cat([x, x.flip(axis)], dim=axis)
            kwargs[name] = x.narrow(axis, 0, size).clone()
    return args, kwargs
