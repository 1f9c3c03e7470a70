"""``genzip SUBCOMMAND``: run, bench, inspect and list what genzip knows.

Each subcommand lives in its own ``cmd_*`` module exposing ``add_arguments`` and ``run``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from genzip._version import __version__
from genzip.tools.cli_common import add_common_flags, guarded

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "run": ("genzip.tools.cmd_run", "run an artifact on its example inputs or an .npz and print output stats"),
    "bench": ("genzip.tools.cmd_bench", "median latency of an artifact, optionally vs another (interleaved)"),
    "inspect": ("genzip.tools.cmd_inspect", "manifest, operator histogram and pass stats of an artifact"),
    "lint": ("genzip.tools.cmd_lint", "check an artifact against a backend's rules (TensorRT) without that backend"),
    "passes": ("genzip.tools.cmd_list", "list registered passes and their options"),
    "recipes": ("genzip.tools.cmd_list", "list --recipe names and their specs"),
    "presets": ("genzip.tools.cmd_list", "list built-in model presets"),
    "moa-search": ("genzip.tools.cmd_moa_search", "profile head influence and write a MoA span plan (MILP)"),
    "eep-search": ("genzip.tools.cmd_eep_search", "EEP evolutionary search: an expert-prune plan for a MoE LLM"),
    "sample": ("genzip.tools.cmd_sample", "CFG sampling of a DiT artifact through a diffusers scheduler, with timing"),
    "plan": ("genzip.tools.cmd_plan", "DiTFastAttn greedy search: an attention-sharing plan for a share-attn artifact"),
    "generate": ("genzip.tools.cmd_generate", "generate text with a KV-cache LLM artifact; prefill time, decode tokens/s, KV bytes"),
    "eval": ("genzip.tools.cmd_eval", "generation quality of a DiT or LLM artifact, optionally vs a reference"),
}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """Only the chosen subcommand's module is imported, so one broken or slow
    subcommand cannot take the others down."""
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if not a.startswith("-")), None)
    parser = argparse.ArgumentParser(prog="genzip", description="Run, benchmark and inspect genzip artifacts.")
    parser.add_argument("--version", action="version", version=f"genzip {__version__}")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND")
    subs.required = True
    for name, (module, help_text) in SUBCOMMANDS.items():
        sub = subs.add_parser(name, help=help_text, description=help_text)
        if name != chosen:
            continue
        mod = importlib.import_module(module)
        if hasattr(mod, "add_arguments_for"):
            mod.add_arguments_for(name, sub)
        else:
            mod.add_arguments(sub)
        add_common_flags(sub)
        sub.set_defaults(_module=mod, _name=name)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser(argv).parse_args(argv)
    mod = args._module
    body = (lambda a: mod.run_for(a._name, a)) if hasattr(mod, "run_for") else mod.run
    return guarded(f"genzip {args._name}", body, args)


if __name__ == "__main__":
    sys.exit(main())
