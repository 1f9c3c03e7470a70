"""TensorRT optimization profiles: the ``--shapes`` flag and defaults from the manifest.

One flag replaces trtexec's ``--minShapes/--optShapes/--maxShapes`` triple::

    --shapes 'hidden_states:1x4x64x64:2x4x64x64:4x4x128x128,timestep:1:2:4'

* entries are separated by commas, as in trtexec; each is ``NAME:DIMS`` (fixed shape,
  min = opt = max) or ``NAME:MIN:OPT:MAX``;
* ``DIMS`` is trtexec's ``AxBxC``; an empty ``DIMS`` is a scalar;
* a name holding ``:`` or ``,`` is single-quoted, as trtexec allows (``'in:0':1x3``);
* repeating ``--shapes`` adds one optimization profile per occurrence (trtexec repeats
  the triple for the same effect).

Inputs a profile does not name get their range from the manifest: static dims are
fixed; a dim the export kept dynamic with a range (``--dynamic-axes``, the manifest's
``source_info.dynamic_sizes``) runs from that range's min through its value in the
artifact's example inputs (opt) to its max; any other symbolic dim (the batch) runs from
1 (min) through its example value (opt) to twice that (max). The same rule applies to
every use of a symbol, so inputs sharing a dim name stay consistent.

Invariant: every profile returned by ``resolve_profiles`` covers every graph input,
with ``min <= opt <= max`` elementwise, the manifest's rank, and its static dims.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from genzip.errors import GenzipError, did_you_mean

_SYNTAX = "write --shapes NAME:MINxDIMS:OPTxDIMS:MAXxDIMS[,NAME:...] or NAME:AxBxC for a fixed shape"


@dataclasses.dataclass(frozen=True)
class ShapeRange:
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def as_json(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


Profile = dict[str, ShapeRange]


def _split_entries(spec: str) -> list[str]:
    """Split on commas that are not inside single quotes."""
    entries, current, quoted = [], [], False
    for ch in spec:
        if ch == "'":
            quoted = not quoted
        if ch == "," and not quoted:
            entries.append("".join(current))
            current = []
        else:
            current.append(ch)
    if quoted:
        raise GenzipError(f"--shapes '{spec}' has an unclosed quote", _SYNTAX)
    entries.append("".join(current))
    return [e.strip() for e in entries]


def _dims(text: str, entry: str) -> tuple[int, ...]:
    if text.strip() == "":
        return ()
    try:
        dims = tuple(int(d) for d in text.strip().split("x"))
    except ValueError:
        raise GenzipError(f"--shapes entry '{entry}': '{text}' is not a shape like 1x4x64x64", _SYNTAX) from None
    if any(d < 0 for d in dims):
        raise GenzipError(f"--shapes entry '{entry}': '{text}' has a negative dim", _SYNTAX)
    return dims


def _entry(entry: str) -> tuple[str, ShapeRange]:
    if entry.startswith("'"):
        close = entry.find("'", 1)
        name, rest = entry[1:close], entry[close + 1:]
        if not rest.startswith(":"):
            raise GenzipError(f"--shapes entry '{entry}': expected ':' after the quoted name", _SYNTAX)
        rest = rest[1:]
    else:
        name, sep, rest = entry.partition(":")
        if not sep:
            raise GenzipError(f"--shapes entry '{entry}' has no ':' between name and shape", _SYNTAX)
    if not name:
        raise GenzipError(f"--shapes entry '{entry}' has an empty input name", _SYNTAX)
    parts = rest.split(":")
    if len(parts) == 1:
        lo = opt = hi = _dims(parts[0], entry)
    elif len(parts) == 3:
        lo, opt, hi = (_dims(p, entry) for p in parts)
    else:
        raise GenzipError(f"--shapes entry '{entry}' has {len(parts)} shapes; give 1 (fixed) or 3 (min:opt:max)",
                          _SYNTAX)
    if not len(lo) == len(opt) == len(hi):
        raise GenzipError(f"--shapes entry '{entry}': min, opt and max have different ranks", _SYNTAX)
    if not all(a <= b <= c for a, b, c in zip(lo, opt, hi)):
        raise GenzipError(f"--shapes entry '{entry}': needs min <= opt <= max in every dim", _SYNTAX)
    return name, ShapeRange(lo, opt, hi)


def parse_shapes(spec: str) -> Profile:
    """One ``--shapes`` value -> ``{input name: ShapeRange}``."""
    if not spec.strip():
        raise GenzipError("--shapes is empty", _SYNTAX)
    profile: Profile = {}
    for entry in _split_entries(spec):
        if not entry:
            raise GenzipError(f"--shapes '{spec}' has an empty entry", _SYNTAX)
        name, shape_range = _entry(entry)
        if name in profile:
            raise GenzipError(f"--shapes '{spec}' names input '{name}' twice", "give each input once per profile")
        profile[name] = shape_range
    return profile


def default_range(spec: Mapping[str, Any], example_shape: Sequence[int] | None,
                  ranges: Mapping[str, Mapping[str, int]] | None = None) -> ShapeRange:
    """Range of one manifest input: static dims fixed, a dim in ``ranges`` (dim name ->
    ``{"min", "max"}``) min .. example .. max, other symbolic dims 1 .. example .. 2*example."""
    shape = spec["shape"]
    if shape is None:
        raise GenzipError(f"input '{spec['name']}' has no known rank, so it has no optimization profile",
                          "export it with a shape (genzip lint --target trt reports this)")
    lo, opt, hi = [], [], []
    for axis, dim in enumerate(shape):
        if isinstance(dim, int):
            lo.append(dim), opt.append(dim), hi.append(dim)
            continue
        if example_shape is None or len(example_shape) != len(shape):
            raise GenzipError(f"input '{spec['name']}' dim {axis} ('{dim}') is dynamic and has no example value",
                              f"give its range with --shapes {spec['name']}:MIN:OPT:MAX")
        value = int(example_shape[axis])
        if ranges and dim in ranges:
            lo.append(int(ranges[dim]["min"])), opt.append(value), hi.append(int(ranges[dim]["max"]))
            continue
        lo.append(1), opt.append(value), hi.append(max(1, 2 * value))
    return ShapeRange(tuple(lo), tuple(opt), tuple(hi))


def _check_against(name: str, given: ShapeRange, spec: Mapping[str, Any]) -> None:
    shape = spec["shape"]
    if shape is None:
        return
    if len(given.min) != len(shape):
        raise GenzipError(f"--shapes gives '{name}' rank {len(given.min)}, the model's input has rank {len(shape)} "
                          f"{shape}", "match the manifest's shape (genzip inspect ARTIFACT)")
    for axis, dim in enumerate(shape):
        if isinstance(dim, int) and not given.min[axis] == given.max[axis] == dim:
            raise GenzipError(f"--shapes gives '{name}' dim {axis} a range, but the model fixes it to {dim}",
                              f"use {dim} for that dim")


def resolve_profiles(specs: Sequence[str], inputs: Sequence[Mapping[str, Any]],
                     example_shapes: Mapping[str, Sequence[int]],
                     ranges: Mapping[str, Mapping[str, int]] | None = None) -> list[Profile]:
    """Parse every ``--shapes`` value and complete each profile from the manifest ``inputs``
    (``ranges``: the dynamic sizes' ranges, see :func:`default_range`)."""
    by_name = {s["name"]: s for s in inputs}
    parsed = [parse_shapes(s) for s in specs] or [{}]
    profiles = []
    for given in parsed:
        for name, shape_range in given.items():
            if name not in by_name:
                raise GenzipError(f"--shapes names '{name}', which is not a model input{did_you_mean(name, by_name)}",
                                  f"the model takes {', '.join(by_name)}")
            _check_against(name, shape_range, by_name[name])
        profiles.append({s["name"]: given.get(s["name"]) or default_range(s, example_shapes.get(s["name"]), ranges)
                         for s in inputs})
    return profiles
