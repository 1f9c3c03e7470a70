"""Config files of a compile (``genzip-compile --config FILE``, ``genzip.compile(config=FILE)``).

Invariant: a config file holds the same settings as the command line and the Python
keywords, under the same names (snake_case; kebab-case is accepted), and every key
and value is checked here, before anything loads, with one-line errors: unknown keys
with did-you-mean, wrong types naming the expected type. Relative paths in a file
resolve against the file's folder.

Formats: TOML (``.toml``, tomllib), YAML (``.yaml``/``.yml``; only where PyYAML is
installed), JSON (``.json``). An artifact's ``genzip.json`` manifest is read through
its ``config`` section: the resolved settings the artifact was compiled with.
"""

from __future__ import annotations

import json
import os
import types
import typing
from collections.abc import Mapping
from typing import Any

from genzip.errors import GenzipError, did_you_mean

# Settings that name files: resolved against the config file's folder.
PATH_KEYS = ("model", "inputs", "calib_data", "out", "reproducer_dir", "timing_cache")
MANIFEST_SECTION = "config"


def _parse_yaml(path: str, text: str) -> Any:
    try:
        import yaml
    except ImportError:
        raise GenzipError(f"'{path}' is YAML, but PyYAML is not installed",
                          "pip install pyyaml, or write the config as TOML") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        first = str(e).strip().splitlines()[0]
        raise GenzipError(f"config file '{path}' does not parse: {first}", "fix the YAML syntax") from None


def _toml():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the tomli backport, if installed
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise GenzipError("reading TOML needs Python 3.11 or the tomli package",
                              "pip install tomli, or write the config as JSON") from None
    return tomllib


def _parse(path: str) -> Any:
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".toml", ".yaml", ".yml", ".json"):
        raise GenzipError(f"config file '{path}' has an unknown extension '{ext}'", "use .toml, .yaml, .yml or .json")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise GenzipError(f"cannot read config file '{path}': {e.strerror or e}", "check the path") from None
    except UnicodeDecodeError as e:
        raise GenzipError(f"config file '{path}' is not text ({e.reason})", "save it as UTF-8") from None
    if ext in (".yaml", ".yml"):
        return _parse_yaml(path, text)
    try:
        if ext == ".toml":
            return _toml().loads(text)
        return json.loads(text)
    except ValueError as e:  # TOMLDecodeError and JSONDecodeError are ValueErrors
        first = str(e).strip().splitlines()[0]
        raise GenzipError(f"config file '{path}' does not parse: {first}", "fix the syntax there") from None


def read_config(path: str) -> dict[str, Any]:
    """The settings of a config file or an artifact manifest, keys in snake_case, paths
    resolved against the file's folder (not yet type-checked: see :func:`check_settings`)."""
    path = os.fspath(path)
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "genzip.json")):
        path = os.path.join(path, "genzip.json")  # an artifact folder stands for its manifest
    data = _parse(path)
    if isinstance(data, Mapping) and "genzip_version" in data:  # an artifact manifest
        if not isinstance(data.get(MANIFEST_SECTION), Mapping):
            raise GenzipError(f"'{path}' is an artifact manifest without a '{MANIFEST_SECTION}' section "
                              "(written by an older genzip)", "recompile the artifact, or write a config file")
        data = data[MANIFEST_SECTION]
    if not isinstance(data, Mapping):
        raise GenzipError(f"config file '{path}' holds a {type(data).__name__}, not a table of settings",
                          "write key = value pairs at the top level")
    base = os.path.dirname(os.path.abspath(path))
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name in PATH_KEYS and isinstance(value, str) and value:
            value = _resolve_path(base, value, name)
        out[name] = value
    return out


def _resolve_path(base: str, value: str, key: str) -> str:
    expanded = os.path.expanduser(value)
    if os.path.isabs(expanded):
        return expanded
    candidate = os.path.join(base, expanded)
    # A model may be a preset or package.module:function: only existing paths are rebased.
    if key == "model" and not os.path.exists(candidate):
        return value
    return candidate


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) in (list, tuple, frozenset, set):
        return f"a list (each {_type_name(typing.get_args(hint)[0])})"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            dict: "a table"}.get(hint, getattr(hint, "__name__", str(hint)))


class _Mismatch(Exception):
    pass


def _convert(value: Any, hint: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin is typing.Literal:
        if value in args:
            return value
        raise _Mismatch
    if origin in (list, tuple, frozenset, set):
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple, set, frozenset)):
            raise _Mismatch
        elem = args[0] if args else Any
        return origin(_convert(v, elem) for v in items)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _Mismatch
    if isinstance(hint, type):
        if isinstance(value, hint):
            return value
        raise _Mismatch
    return value


def check_settings(settings: Mapping[str, Any], hints: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Check every key against ``hints`` (name -> type hint) and convert the values
    (lists to the hinted collection, integers to floats); one-line errors."""
    out = {}
    for key, value in settings.items():
        name = str(key).replace("-", "_")
        if value is None:  # JSON null / YAML ~: unset (a manifest's model = null for an in-memory model)
            continue
        if name not in hints:
            raise GenzipError(f"{where} has an unknown key '{key}'{did_you_mean(name, hints)}",
                              f"its keys are: {', '.join(sorted(hints))}")
        try:
            out[name] = _convert(value, hints[name])
        except _Mismatch:
            raise GenzipError(f"{where} key '{name}' is {value!r} ({type(value).__name__}), "
                              f"expected {_type_name(hints[name])}", f"fix the value of '{name}'") from None
    return out
