"""``genzip eep-search``: EEP's evolutionary search for an ``expert-prune`` plan.

Invariant: the written plan is what ``expert-prune{plan=FILE}`` reads (``num_experts``,
``top_k``, ``layers``) plus informational keys: ``search`` (settings, evaluations, cache
hits, fitness per generation) and ``heldout`` (loss and perplexity on the held-out
windows of the unpruned model, the EEP plan, the router-frequency baseline and the mean
of ``--random`` random keep sets), and ``baseline_layers`` (the baseline's plan).
Calibration text is tokenized with the model's own tokenizer (a folder's, a trained
preset's committed one; without one, UTF-8 bytes mod the vocabulary). A trained preset
searches on its KJV training-split text and scores on its held-out chapters; other
models split ``--text`` (default: built-in prose) into fit windows and a held-out
last quarter. The file is written atomically and an existing one needs ``--force``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile

from genzip.errors import GenzipError
from genzip.tools.cli_common import add_dist_flags, search_executor


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="MoE causal LM: a trained preset (trained-moe) or a transformers folder")
    parser.add_argument("--keep", type=int, required=True, help="experts kept per layer (>= the model's top-k)")
    parser.add_argument("--out", required=True, help="plan JSON to write (for expert-prune{plan=FILE})")
    parser.add_argument("--population", type=int, default=8, help="individuals per generation (default 8)")
    parser.add_argument("--generations", type=int, default=10, help="generations (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="search seed (default 0)")
    parser.add_argument("--fitness", choices=("loss", "kl"), default="loss",
                        help="LM loss on the fit windows (default) or KL to the unpruned model")
    parser.add_argument("--no-merge", action="store_true", help="search kept experts only (EEP's pruning phase)")
    parser.add_argument("--max-evals", type=int, default=None,
                        help="evaluation budget (default population x (generations + 1))")
    parser.add_argument("--text", default=None, help="calibration text file (default: the preset's or built-in)")
    parser.add_argument("--seq", type=int, default=128, help="tokens per window (default 128)")
    parser.add_argument("--windows", type=int, default=8, help="fit windows (default 8)")
    parser.add_argument("--heldout", type=int, default=16, help="held-out windows (default 16)")
    parser.add_argument("--random", type=int, default=3, help="random keep sets scored for comparison (default 3)")
    parser.add_argument("--force", action="store_true", help="replace an existing --out")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    add_dist_flags(parser)


def load_moe(ref: str):
    """(module in eager-experts mode, tokenizer or None, trained preset name or None)."""
    from pathlib import Path

    from genzip.frontend.hf_folder import load_causal_lm_folder
    from genzip.frontend.presets import PRESETS, get_preset

    preset = None
    if ref in PRESETS:
        spec = get_preset(ref)
        if spec.weights is None or spec.family != "llm":
            raise GenzipError(f"eep-search: preset '{ref}' is not a trained MoE LM", "use trained-moe or a folder")
        from genzip.runtime import _eval_data

        folder, preset = _eval_data.weights_folder(spec.weights), ref
    elif os.path.isdir(ref):
        folder = Path(ref)
    else:
        raise GenzipError(f"eep-search: '{ref}' is neither a trained preset nor a folder",
                          "give trained-moe or a transformers MoE folder (save_pretrained)")
    module = load_causal_lm_folder(folder)
    if hasattr(module, "set_experts_implementation"):
        module.set_experts_implementation("eager")  # the fastest exact form in eager torch
    tokenizer = None
    if (folder / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    return module, tokenizer, preset


def _ids(text: str, tokenizer, vocab: int):
    import numpy as np

    if tokenizer is None:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64) % vocab
    ids = np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], np.int64)
    if len(ids) and ids.max() >= vocab:
        raise GenzipError(f"eep-search: the tokenizer gives ids up to {ids.max()}, outside the {vocab}-token "
                          "vocabulary", "use the tokenizer saved with this model")
    return ids


def windows(args, module, tokenizer, preset):
    """(fit windows, held-out windows) as int64 tensors ``[W, seq]``."""
    import numpy as np
    import torch

    seq = args.seq
    if args.text is None and preset is not None:
        from genzip.frontend.trained import _kjv, _lm
        from genzip.runtime import _eval_data

        fit = _lm.encode(tokenizer, _kjv.split("train")[: 4 * args.windows * seq // 100 + 8]).numpy()
        fit = fit[: len(fit) // seq * seq].reshape(-1, seq)[: args.windows]
        held = _eval_data.heldout_token_windows(tokenizer, seq, args.heldout)
    else:
        if args.text is None:
            from genzip.searches.moa_profile import CALIBRATION_TEXT as text
        else:
            try:
                with open(args.text, encoding="utf-8") as f:
                    text = f.read()
            except (OSError, UnicodeDecodeError) as e:
                raise GenzipError(f"eep-search: cannot read --text '{args.text}': {e}", "give a UTF-8 text file") \
                    from None
        ids = _ids(text, tokenizer, int(module.config.vocab_size))
        total = len(ids) // seq
        if total < 2:
            raise GenzipError(f"eep-search: the calibration text has {len(ids)} tokens, fewer than two windows of "
                              f"{seq}", "give a longer --text or a smaller --seq")
        all_w = ids[: total * seq].reshape(total, seq)
        n_held = max(1, total // 4)
        fit, held = all_w[: total - n_held][: args.windows], all_w[total - n_held :][: args.heldout]
    if len(fit) < 1 or len(held) < 1:
        raise GenzipError("eep-search: no fit or held-out windows", "give more text, or smaller --seq")
    return torch.from_numpy(np.ascontiguousarray(fit)), torch.from_numpy(np.ascontiguousarray(held))


def write_atomic(path: str, text: str, force: bool) -> None:
    if os.path.exists(path) and not force:
        raise GenzipError(f"eep-search: '{path}' exists", "pass --force to replace it, or another --out")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".eep-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as e:
        raise GenzipError(f"eep-search: cannot write '{path}': {e.strerror}", "check the --out path") from None


def run(args: argparse.Namespace) -> int:
    if args.seq < 2 or args.windows < 1 or args.heldout < 1 or args.random < 0:
        raise GenzipError("eep-search: --seq must be >= 2, --windows and --heldout >= 1, --random >= 0")
    if not args.force and os.path.exists(args.out):
        raise GenzipError(f"eep-search: '{args.out}' exists", "pass --force to replace it, or another --out")
    import numpy as np

    from genzip.searches import eep
    from genzip.tools.cli_common import Progress

    progress = Progress(not args.quiet)
    module, tokenizer, preset = load_moe(args.model)
    fit, held = windows(args, module, tokenizer, preset)
    progress(f"eep-search: {len(fit)} fit and {len(held)} held-out windows of {args.seq} tokens")
    with search_executor(args) as executor:  # one new plan per unit, on Ray workers
        result = eep.search(module, fit, keep=args.keep, population=args.population, generations=args.generations,
                            seed=args.seed, metric=args.fitness, merge=not args.no_merge, max_evals=args.max_evals,
                            progress=progress, executor=executor)
    _, e, k = eep.moe_experts.model_shape(module)
    plan = result.best.plan(e, k)
    scorer = eep.PlanScorer(module, held)
    rng = np.random.default_rng(args.seed + 1)
    randoms = [scorer.score(eep.random_individual(rng, len(result.best.keep), e, args.keep).plan(e, k))
               for _ in range(args.random)]
    losses = {"unpruned": scorer.score(None), "eep": scorer.score(plan),
              "baseline": scorer.score(result.baseline.plan(e, k))}
    if randoms:
        losses["random"] = float(np.mean(randoms))
    heldout = {name: {"loss": round(v, 5), "perplexity": round(math.exp(v), 4)} for name, v in losses.items()}
    doc = plan.to_json() | {
        "search": {"keep": args.keep, "population": args.population, "generations": args.generations,
                   "seed": args.seed, "fitness": args.fitness, "merge": not args.no_merge,
                   "evaluations": result.evals, "cache_hits": result.cache_hits,
                   "fit_windows": len(fit), "seq": args.seq, "best_fitness": round(result.best_fitness, 6),
                   "baseline_fitness": round(result.baseline_fitness, 6),
                   "history": [round(h, 6) for h in result.history],
                   "tokenizer": "model" if tokenizer is not None else "utf-8 bytes"},
        "heldout": heldout | {"windows": len(held)},
        "baseline_layers": result.baseline.plan(e, k).to_json()["layers"],
    }
    write_atomic(args.out, json.dumps(doc, indent=1) + "\n", args.force)
    if args.json:
        sys.stdout.write(json.dumps({"out": args.out, "heldout": doc["heldout"], "search": doc["search"]}) + "\n")
        return 0
    sys.stdout.write(f"plan written to {args.out}: keep {args.keep} of {e} experts in {len(plan.layers)} layers\n")
    for name, v in heldout.items():
        sys.stdout.write(f"  held-out perplexity {name}: {v['perplexity']:.3f}\n")
    return 0
