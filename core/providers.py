"""ONNX Runtime execution providers: the ``--providers`` / ``--device`` syntax and its check.

Invariant: every provider list genzip hands ONNX Runtime went through ``resolve_providers``,
so it names only providers this onnxruntime build has (else a one-line ``GenzipError``
listing the ones it has), in priority order, each with its options as strings.

Syntax (``--providers``), the pass-spec style: comma-separated providers, highest
priority first, each optionally followed by ``{key=value key=value}`` provider options
(ONNX Runtime's own option names, e.g. ``device_id``, ``trt_fp16_enable``):

    CUDAExecutionProvider{device_id=1 arena_extend_strategy=kSameAsRequested},CPUExecutionProvider

Short names: ``cpu``, ``cuda``, ``tensorrt`` (or ``trt``). ``--device cpu`` means
``CPUExecutionProvider``; ``--device cuda`` means ``CUDAExecutionProvider,CPUExecutionProvider``
(CPU catches the ops CUDA lacks). Nothing given: CPU only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from genzip.errors import GenzipError, did_you_mean

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
ALIASES = {"cpu": CPU, "cuda": CUDA, "tensorrt": TENSORRT, "trt": TENSORRT}
DEVICES = {"cpu": (CPU,), "cuda": (CUDA, CPU)}
SYNTAX = "write it as Name{key=value key=value},Name (e.g. CUDAExecutionProvider{device_id=0},CPUExecutionProvider)"

# One provider with its options, in ONNX Runtime's (name, {option: string}) form.
Provider = tuple[str, dict[str, str]]

_ITEM = re.compile(r"\s*([A-Za-z][A-Za-z0-9_]*)\s*(?:\{([^{}]*)\})?\s*(?:,|$)")


def parse_providers(spec: str) -> list[Provider]:
    """``spec`` (module docstring syntax) -> [(full name, options)]; names not yet checked."""
    providers: list[Provider] = []
    pos = 0
    if not spec.strip():
        raise GenzipError("--providers is empty", SYNTAX)
    while pos < len(spec):
        m = _ITEM.match(spec, pos)
        if m is None or m.end() == pos:
            raise GenzipError(f"malformed --providers at column {pos + 1} in '{spec}'", SYNTAX)
        options: dict[str, str] = {}
        for token in (m.group(2) or "").replace(",", " ").split():
            key, eq, value = token.partition("=")
            if not eq or not key:
                raise GenzipError(f"provider option '{token}' in '{spec}' is not key=value", SYNTAX)
            options[key] = value
        providers.append((ALIASES.get(m.group(1).lower(), m.group(1)), options))
        pos = m.end()
    return providers


def _normalize(providers) -> list[Provider]:
    """A spec string, or ONNX Runtime's forms: names, or (name, options) pairs."""
    if isinstance(providers, str):
        return parse_providers(providers)
    if not isinstance(providers, Sequence):
        raise GenzipError(f"providers of type {type(providers).__name__} cannot name execution providers",
                          "pass a string such as 'cuda,cpu', a list of names, or (name, options) pairs")
    out: list[Provider] = []
    for item in providers:
        if isinstance(item, str):
            out.extend(parse_providers(item))
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], Mapping):
            out.append((ALIASES.get(item[0].lower(), item[0]), {str(k): str(v) for k, v in item[1].items()}))
        else:
            raise GenzipError(f"provider {item!r} is neither a name nor a (name, options) pair",
                              "pass names like 'CUDAExecutionProvider' or ('CUDAExecutionProvider', {'device_id': 0})")
    return out


def resolve_providers(providers=None, device: str | None = None) -> tuple[Provider, ...]:
    """The checked provider list for ``providers`` (string, names or pairs) or ``device``.

    Neither: CPU only. Both: refused (they would disagree). A provider this onnxruntime
    build lacks is a one-line error listing the ones it has.
    """
    import onnxruntime as ort

    if providers and device:
        raise GenzipError("both --providers and --device were given", "pass one of them")
    if device:
        if device not in DEVICES:
            raise GenzipError(f"unknown device '{device}'", f"use one of {', '.join(DEVICES)} (or --providers)")
        chosen = [(name, {}) for name in DEVICES[device]]
    elif providers:
        chosen = _normalize(providers)
    else:
        chosen = [(CPU, {})]
    available = ort.get_available_providers()
    known = set(ort.get_all_providers())
    for name, _ in chosen:
        if name in available:
            continue
        if name not in known:
            raise GenzipError(f"'{name}' is not an ONNX Runtime execution provider{did_you_mean(name, known)}",
                              f"this onnxruntime {ort.__version__} has: {', '.join(available)}")
        fix = "install onnxruntime-gpu (pip install genzip[gpu]) on a machine with CUDA" \
            if name in (CUDA, TENSORRT) else "install the onnxruntime build that ships it"
        raise GenzipError(f"this onnxruntime {ort.__version__} lacks {name}; it has {', '.join(available)}", fix)
    names = [name for name, _ in chosen]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise GenzipError(f"provider {duplicate} is listed twice", "name each provider once")
    return tuple(chosen)


def is_cpu_only(providers: Sequence[Provider] | None) -> bool:
    return not providers or all(name == CPU for name, _ in providers)


def describe(providers: Sequence[Provider] | None) -> list[str]:
    """The provider names as a manifest records them (options left out: they may hold paths)."""
    return [name for name, _ in providers] if providers else [CPU]
