"""``genzip passes|recipes|presets``: what genzip knows, one line each."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing


def add_arguments_for(name: str, p: argparse.ArgumentParser) -> None:
    del name, p


def _options(cls) -> str:
    hints = typing.get_type_hints(cls.Options)
    parts = []
    for f in dataclasses.fields(cls.Options):
        default = f.default if f.default is not dataclasses.MISSING else "?"
        tp = getattr(hints[f.name], "__name__", str(hints[f.name]).replace("typing.", ""))
        parts.append(f"{f.name.replace('_', '-')}={default} ({tp})")
    return " ".join(parts)


def run_for(name: str, args: argparse.Namespace) -> int:
    del args
    w = sys.stdout.write
    if name == "passes":
        from genzip.passes import get_pass_class, pass_names

        for pname in pass_names():
            cls = get_pass_class(pname)
            w(f"{pname:<20} {cls.summary}\n")
            opts = _options(cls)
            if opts:
                w(f"{'':<20}   options: {opts}\n")
            if cls.requires_facts:
                w(f"{'':<20}   requires: {', '.join(sorted(cls.requires_facts))}\n")
        w("every pass also takes allow-noop=false (bool): true accepts a rewrite that changes nothing\n")
    elif name == "recipes":
        from genzip.tools.recipes import RECIPES, recipe_parameters

        for rname, (spec, doc) in RECIPES.items():
            params = [p for p in recipe_parameters(rname) if "." not in p]
            w(f"{rname:<12} {spec}\n{'':<12} {doc}\n{'':<12} parameters: {' '.join(params)}\n")
    else:
        from genzip.frontend import PRESETS

        for pname, doc in PRESETS.items():
            w(f"{pname:<14} {doc}\n")
    return 0
