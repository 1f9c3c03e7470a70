"""``genzip moa-search``: profile per-head attention influence, choose MoA span rules by MILP.

Invariant: the written plan is ``{"alphas": [L][H], "betas": [L][H], "sinks": int}``
(what ``span-attn{plan=FILE}`` reads; L = causal attention layers, H = query heads)
plus informational keys (``budget``, ``max_distinct``, ``lengths``, ``density``,
``metric``, ``predicted_cost``, ``rules``, ``calibration_windows``, ``tokenizer``).
Calibration text is tokenized with the model's own tokenizer when it has one (a
folder's ``tokenizer.json``, a trained preset's committed one; trained presets then
default to their training-split text), else taken as UTF-8 bytes. Every layer uses at most ``--max-distinct``
distinct rules, and the mean density (kept causal pairs / dense causal pairs) over
all heads is within ``--budget`` at every profiled length.
"""

from __future__ import annotations

import argparse
import json
import sys

from genzip.errors import GenzipError
from genzip.tools.cli_common import add_dist_flags, search_executor


def _floats(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def _ints(text: str) -> list[int]:
    values = _floats(text)
    if any(v != int(v) or v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return sorted({int(v) for v in values})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="causal LM reference (preset like tiny-llama, HF folder, module:function)")
    parser.add_argument("--out", required=True, help="plan JSON to write (for span-attn{plan=FILE})")
    parser.add_argument("--budget", type=float, default=0.5,
                        help="max mean attention density over heads, in (0, 1] (default 0.5)")
    parser.add_argument("--max-distinct", type=int, default=2, help="max distinct (alpha, beta) per layer (default 2)")
    parser.add_argument("--alphas", type=_floats, default=[0.0, 4.0, 8.0], help="candidate alphas (default 0,4,8)")
    parser.add_argument("--betas", type=_floats, default=[0.0, 0.125, 0.25, 0.5, 1.0],
                        help="candidate betas (default 0,0.125,0.25,0.5,1)")
    parser.add_argument("--sinks", type=int, default=2, help="always-visible first tokens (default 2)")
    parser.add_argument("--lengths", type=_ints, default=None,
                        help="calibration lengths (default: the model's N/2 and N)")
    parser.add_argument("--text", default=None, help="calibration text file (default: built-in English prose)")
    parser.add_argument("--windows", type=int, default=8, help="calibration windows per length (default 8)")
    parser.add_argument("--metric", choices=("gradient", "mass"), default="gradient",
                        help="head cost: |first-order loss change| (MoA, default) or dropped attention mass")
    parser.add_argument("--json", action="store_true", help="print the plan summary as one JSON object")
    add_dist_flags(parser)


def _default_lengths(source) -> list[int]:
    """N/2 and N, N being the exported token count (the 2-D integer input, e.g. input_ids)."""
    for array in source.example_inputs.values():
        if array.ndim == 2 and array.dtype.kind in "iu":
            n = int(array.shape[1])
            return sorted({max(2, n // 2), n})
    raise GenzipError("moa-search: cannot tell the model's sequence length", "give --lengths N1,N2")


def _tokenizer(source):
    """(the model's own transformers tokenizer or None, whether it is a trained preset's):
    a folder's ``tokenizer.json``, or the committed weights folder of a trained preset."""
    import os

    folder, trained = source.info.get("path"), False
    if source.info.get("weights"):
        from genzip.runtime import _eval_data

        folder, trained = str(_eval_data.weights_folder(source.info["weights"])), True
    if not folder or not os.path.isfile(os.path.join(folder, "tokenizer.json")):
        return None, False
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, local_files_only=True), trained


def run(args: argparse.Namespace) -> int:
    if not 0 < args.budget <= 1:
        raise GenzipError(f"moa-search: --budget must be in (0, 1], got {args.budget}", "write --budget 0.5")
    if args.sinks < 0 or args.windows < 1:
        raise GenzipError("moa-search: --sinks must be >= 0 and --windows >= 1")
    from genzip.frontend import load_model
    from genzip.searches import moa_milp, moa_profile

    configs = [(a, b) for a in args.alphas for b in args.betas]
    if args.max_distinct < 1:
        raise GenzipError(f"moa-search: --max-distinct must be >= 1, got {args.max_distinct}")

    text = moa_profile.CALIBRATION_TEXT
    if args.text is not None:
        try:
            with open(args.text, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise GenzipError(f"moa-search: cannot read --text '{args.text}': {e}", "give a UTF-8 text file") from None
    source = load_model(args.model)
    module = source.info.get("module")
    if module is None or source.info.get("family") not in ("llm", None):
        raise GenzipError(f"moa-search: '{args.model}' is not a torch causal LM",
                          "use an LLM preset (tiny-llama), a transformers folder or a module:function")
    lengths = args.lengths or _default_lengths(source)
    config = module.config
    # Fail fast on an impossible budget, before profiling.
    moa_milp.check_feasible(moa_profile.density_table(lengths, configs, args.sinks), args.budget,
                            int(config.num_hidden_layers), int(config.num_attention_heads), args.max_distinct)
    tokenizer, trained = _tokenizer(source)
    if args.text is None and trained:
        # A trained LM profiles on its own training-split text: long enough for long windows.
        from genzip.frontend.trained import _kjv

        text = "\n\n".join(_kjv.split("train")[: 40 * args.windows])
    with search_executor(args) as executor:  # one calibration window per unit, on Ray workers
        prof = moa_profile.profile_module(module, lengths=lengths, configs=configs, sinks=args.sinks, text=text,
                                          max_windows=args.windows, metric=args.metric, tokenizer=tokenizer,
                                          executor=executor)
    sel = moa_milp.select_rules(prof.loss, prof.density, budget=args.budget, max_distinct=args.max_distinct)
    plan = {
        "alphas": [[configs[c][0] for c in row] for row in sel.choice.tolist()],
        "betas": [[configs[c][1] for c in row] for row in sel.choice.tolist()],
        "sinks": args.sinks,
        "budget": args.budget, "max_distinct": args.max_distinct, "lengths": lengths,
        "density": [round(d, 6) for d in sel.density],
        "metric": args.metric, "predicted_cost": sel.objective / len(lengths),
        "rules": [sorted({configs[c] for c in row}) for row in sel.choice.tolist()],
        "calibration_windows": prof.windows,
        "tokenizer": "model" if tokenizer is not None else "utf-8 bytes",
    }
    try:
        with open(args.out, "w", encoding="utf-8") as f:
            # One line per key (a layer's heads on one line): readable and diffable.
            f.write("{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in plan.items()) + "\n}\n")
    except OSError as e:
        raise GenzipError(f"moa-search: cannot write '{args.out}': {e.strerror}", "check the --out path") from None
    out = sys.stdout
    if args.json:
        out.write(json.dumps({k: v for k, v in plan.items() if k not in ("alphas", "betas")} | {"out": args.out})
                  + "\n")
        return 0
    out.write(f"plan written to {args.out}: {len(plan['alphas'])} layers, sinks={args.sinks}\n")
    for layer, rules in enumerate(plan["rules"]):
        out.write(f"  layer {layer}: rules {rules}\n")
    for n, d in zip(lengths, plan["density"]):
        out.write(f"  N={n}: mean density {d:.3f} (budget {args.budget:g})\n")
    out.write(f"  predicted cost {plan['predicted_cost']:.4g} ({args.metric}, summed over heads, mean over lengths)\n")
    return 0
