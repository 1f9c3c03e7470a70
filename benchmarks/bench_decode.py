"""``python benchmarks/bench_decode.py``: LLM decode speed, KV bytes and perplexity, genzip vs peers.

    python benchmarks/bench_decode.py [--contexts 512,2048,8192] [--new-tokens 32] [--rounds 2]
        [--variants fp32,w4a16,kv8,moa-0.5,moa-0.25] [--peers ort-genai,transformers] [--hidden 512 --layers 4 ...]
        [--ppl-contexts 128,512] [--moa-plan PLAN.json] [--ppl-windows 16] [--threads 2] [--json]

Speed. One random-weight Llama (config built here from the flags, GQA, saved with
``save_pretrained`` into a temporary folder with trained-llama's tokenizer) is what
every engine reads: genzip compiles it with ``--kv-cache`` once per variant
(``fp32``, ``w4a16``, ``w8a8`` (static activations, calibrated on the folder's windows),
``w8a8-dynamic``, ``fp32-gqa`` / ``w4a16-gqa`` = the same with ``ort-gqa`` last (ORT's
``GroupQueryAttention`` on one shared past/present buffer), ``kv8`` = ``kv-quant``, ``w4a16-kv8``, MoA ``moa-0.5`` /
``moa-0.25`` = ``span-attn{alpha=0 beta=DENSITY sinks=4 seq=CONTEXT+NEW}``, compiled per
context: elastic spans of density·N and an evicting cache of sinks + density·seq tokens
per KV head (per layer where a layer's KV heads need the same); ``moa-D-spread`` gives each
KV head's query heads their own span (density·f·N, f spread over [0.25, 1.75], mean 1),
``-layer`` evicts per layer instead of per KV head (every head keeps the layer's widest
span), ``+kv8`` runs ``kv-quant`` first; ``cskv50`` / ``cskv25`` =
``cskv{ratio=0.5|0.25 window=16 int8=true}``, ``cskv25-nowindow`` without the window,
``cskv25-rebuilt`` with ``absorb=false`` (K/V rebuilt from the features every step), fitted on the compile's calibration
windows: seeded random ids for the speed model, training-split KJV for trained-llama); onnxruntime-genai's
model builder (``python -m onnxruntime_genai.models.builder -i FOLDER -o OUT -p fp32
-e cpu``) exports it and its generate API runs it; transformers runs it eagerly with
its ``DynamicCache``. Per round, per context, per engine (interleaved in this one
process): a seeded random prompt of ``context`` tokens, greedy decoding of
``--new-tokens`` tokens with EOS off; the decode rate counts the steps after the
first new token (which the prefill produces), timed around the decode loop only.
genzip's artifacts also run in onnxruntime-genai's generate loop through the
``genai_config.json`` they carry (engines ``genzip-VARIANT@ort-genai``; not kv8 or cskv,
whose int8 / low-rank caches are not its layout). All engines run ``--threads`` intra-op threads. KV bytes: genzip's bound cache at
capacity (one side of its ping-pong; the one shared buffer for ``*-gqa``); onnxruntime-genai's
shared past/present buffer
(``2 * layers * kv_heads * max_length * head_dim * 4``, the shape it allocates);
transformers' cache tensors after the run.

Perplexity. trained-llama (the only model with real held-out text) compiled the same
way, scored on the KJV held-out chapters cut into non-overlapping windows of each
``--ppl-contexts`` length (up to its 512 positions; longer contexts get ``null`` and
the reason), with its KV bytes per sequence at that length (``--moa-plan PLAN.json``, a
``genzip moa-search trained-llama`` plan, adds variant ``moa-plan``: ``span-attn{plan=PLAN
seq=CONTEXT}``), fed through the bound cache 128 tokens per run (the int8 cache
quantizes every token it stores, so chunked and token-by-token scoring agree); the
``cskv`` variants one token per run, since their full-precision window is the last
``W`` tokens of each run (token by token is how decode uses it).

``--json`` prints one object: ``speed`` rows (engine, context, tokens_per_s median
and all rounds, kv_bytes), ``perplexity`` rows (with trained-llama's cache bytes for
one sequence of that context), ``skipped`` peers with the reason,
the configs and the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import _common
import numpy as np

from genzip.errors import GenzipError

VARIANTS = {
    "fp32": "",
    "fp32-gqa": "ort-gqa",
    "w4a16": "annotate-precision{scheme=w4a16 keep-defaults=false},quant{scheme=w4a16}",
    "w4a16-gqa": "annotate-precision{scheme=w4a16 keep-defaults=false},quant{scheme=w4a16},ort-gqa",
    "w8a8": "annotate-precision,calibrate,quant{scheme=w8a8}",
    "w8a8-dynamic": "annotate-precision{scheme=w8a8-dynamic},quant{scheme=w8a8-dynamic}",
    "kv8": "kv-quant",
    "w4a16-kv8": "annotate-precision{scheme=w4a16 keep-defaults=false},quant{scheme=w4a16},kv-quant",
    "cskv50": "cskv{ratio=0.5 window=16 int8=true}",
    "cskv25": "cskv{ratio=0.25 window=16 int8=true}",
    "cskv25-nowindow": "cskv{ratio=0.25 int8=true}",
    "cskv25-rebuilt": "cskv{ratio=0.25 window=16 int8=true absorb=false}",
}
# MoA variants: span-attn on the --kv-cache graph with the elastic rule span = density·N
# (alpha 0, beta = density) and MOA_SINKS sinks, compiled per context with seq = the
# longest length it serves, so each layer's evicting cache keeps sinks + density·seq tokens.
MOA = {"moa-0.5": 0.5, "moa-0.25": 0.25}
MOA_SINKS = 4
# MoA variants with per-head spans and their cache forms: "-spread" gives the query heads of
# KV head g of Hkv the rule span = density·f_g·N with f_g spread evenly over [0.25, 1.75]
# (mean 1, so the mean span still is density·N; a synthetic stand-in for a moa-search plan,
# whose heads differ); "-layer" evicts per layer (span-attn evict=layer: every KV head keeps
# the layer's widest span) instead of per KV head; "+kv8" runs kv-quant first (int8 cache).
MOA_FORMS = {f"{base}{spread}{layer}{kv8}": (density, bool(spread), "layer" if layer else "head", bool(kv8))
             for base, density in MOA.items() for spread in ("", "-spread") for layer in ("", "-layer")
             for kv8 in ("", "+kv8")}
SPREAD = (0.25, 1.75)
PEERS = ("ort-genai", "transformers")
TRAINED = "trained-llama"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--contexts", default="512,2048,8192", help="prompt lengths for speed (default 512,2048,8192)")
    parser.add_argument("--new-tokens", type=int, default=32, help="greedy tokens per run (default 32)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    parser.add_argument("--variants", default="fp32,w4a16,kv8",
                        help=f"genzip variants: {', '.join(VARIANTS)}, MoA: {', '.join(MOA_FORMS)}")
    parser.add_argument("--peers", default=",".join(PEERS), help="peers: ort-genai, transformers, or none")
    parser.add_argument("--hidden", type=int, default=512, help="speed model hidden size (default 512)")
    parser.add_argument("--layers", type=int, default=4, help="speed model layers (default 4)")
    parser.add_argument("--heads", type=int, default=8, help="speed model query heads (default 8)")
    parser.add_argument("--kv-heads", type=int, default=4, help="speed model KV heads (default 4)")
    parser.add_argument("--intermediate", type=int, default=1408, help="speed model MLP width (default 1408)")
    parser.add_argument("--prefill-chunk", type=int, default=512, help="genzip prefill tokens per run (default 512)")
    parser.add_argument("--ppl-contexts", default="128,512",
                        help="trained-llama perplexity window lengths, or none (default 128,512)")
    parser.add_argument("--moa-plan", default=None,
                        help="a genzip moa-search plan for trained-llama: adds variant moa-plan to the perplexity rows")
    parser.add_argument("--ppl-windows", type=int, default=16, help="held-out windows per context (default 16)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of every engine (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="weights and prompt seed (default 0)")
    parser.add_argument("--work", default=None, help="folder for the model and artifacts (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _ints(text: str, what: str) -> list[int]:
    if text.strip().lower() == "none":
        return []
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise GenzipError(f"{what} '{text}' is not a comma-separated list of integers",
                          f"pass e.g. --{what} 512,2048") from None
    if any(v < 2 for v in values):
        raise GenzipError(f"{what} {values} must be >= 2 tokens each", f"pass e.g. --{what} 512,2048")
    return values


def _names(text: str, known, what: str) -> list[str]:
    names = [] if text.strip().lower() == "none" else [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in known]
    if bad:
        raise GenzipError(f"unknown {what} {bad}", f"use some of {', '.join(known)}")
    return names


# ---- models ------------------------------------------------------------------------------

def speed_folder(root: str, args, max_positions: int) -> str:
    """A random-weight Llama of the flags' size with trained-llama's tokenizer, saved under ``root``."""
    import torch
    import transformers

    from genzip.runtime import _eval_data

    tok_dir = _eval_data.weights_folder(TRAINED)
    config = transformers.LlamaConfig(
        vocab_size=1024, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        max_position_embeddings=max_positions, bos_token_id=0, eos_token_id=0, pad_token_id=0,
        tie_word_embeddings=False)
    torch.manual_seed(args.seed)
    model = transformers.LlamaForCausalLM(config).eval()
    folder = os.path.join(root, "speed-llama")
    model.save_pretrained(folder, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(tok_dir / name, os.path.join(folder, name))
    return folder


def spread_plan(folder: str, density: float, root: str) -> str:
    """Write the "-spread" plan of ``density`` for the model in ``folder``; returns its path."""
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    lo, hi = SPREAD
    factors = [lo + (hi - lo) * g / max(kv_heads - 1, 1) for g in range(kv_heads)] if kv_heads > 1 else [1.0]
    betas = [density * factors[h // (heads // kv_heads)] for h in range(heads)]
    plan = {"alphas": [[0.0] * heads] * config["num_hidden_layers"], "betas": [betas] * config["num_hidden_layers"],
            "sinks": MOA_SINKS}
    path = os.path.join(root, f"spread-{density}-{os.path.basename(folder)}.json")
    with open(path, "w") as f:
        json.dump(plan, f)
    return path


def variant_passes(name: str, seq: int, plan: str | None = None) -> str:
    """The pass pipeline of a variant; MoA's depends on ``seq``, the longest length served
    (``plan``: moa-plan's file, or the "-spread" variants' plan)."""
    if name == "moa-plan":
        return f"canonicalize-attn,span-attn{{plan={plan} seq={seq}}}"
    if name in MOA_FORMS:
        density, spread, evict, kv8 = MOA_FORMS[name]
        rule = f"plan={plan}" if spread else f"alpha=0 beta={density} sinks={MOA_SINKS}"
        return f"canonicalize-attn,{'kv-quant,' if kv8 else ''}span-attn{{{rule} seq={seq} evict={evict}}}"
    return VARIANTS[name]


def compile_variants(folder: str, variants: list[str], root: str, tag: str, threads: int,
                     seqs: list[int], plan: str | None = None) -> dict:
    """One ``--kv-cache`` export of ``folder``, compiled into each variant; name -> {seq: CausalLM}
    (one artifact per seq for MoA, the same artifact for every seq otherwise)."""
    import genzip
    from genzip.compile import CompileOptions, compile_source
    from genzip.frontend.loader import load_model

    source = load_model(folder, kv_cache=True)
    out = {}
    for name in variants:
        out[name] = {}
        moa = name in MOA_FORMS or name == "moa-plan"
        spread = MOA_FORMS[name][1] if name in MOA_FORMS else False
        variant_plan = spread_plan(folder, MOA_FORMS[name][0], root) if spread else plan
        for seq in seqs if moa else seqs[:1]:
            copy = source.copy()
            dest = os.path.join(root, f"{tag}-{name}-{seq}")
            compile_source(copy, dest, CompileOptions(target="ort", passes=variant_passes(name, seq, variant_plan),
                                                      force=True, min_cosine=0.0 if moa else 0.5))
            out[name][seq] = genzip.load(dest, threads=threads)
        if not moa:
            out[name] = dict.fromkeys(seqs, out[name][seqs[0]])
    return out


# ---- engines: each returns (decode tokens/s, kv bytes) -------------------------------------

def run_genzip(lm, ids: np.ndarray, new: int, chunk: int) -> tuple[float, int]:
    gen = lm.generate(ids, max_new_tokens=new, eos_token_id=[], prefill_chunk=chunk)
    return gen.decode_tokens_per_s, gen.kv_bytes


class OrtGenai:
    """onnxruntime-genai's generate loop on a folder with a ``genai_config.json``: its model
    builder's export of the HF folder (``build``), or a genzip artifact (``artifact``), whose
    Concat cache it holds twice (past and present) at the last step, or once when the artifact
    shares one buffer (``ort-gqa``: ``past_present_share_buffer`` in its config)."""

    def __init__(self, og_folder: str, threads: int, copies: int):
        import onnxruntime_genai as og

        config_path = os.path.join(og_folder, "genai_config.json")
        with open(config_path) as f:
            config = json.load(f)
        config["model"]["decoder"].setdefault("session_options", {})["intra_op_num_threads"] = threads
        with open(config_path, "w") as f:
            json.dump(config, f, indent=2)
        self.og, self.model = og, og.Model(og_folder)
        dec = config["model"]["decoder"]
        self.per_token = copies * 2 * dec["num_hidden_layers"] * dec["num_key_value_heads"] * dec["head_size"] * 4
        self.version = og.__version__

    @classmethod
    def build(cls, folder: str, root: str, threads: int) -> OrtGenai:
        import onnxruntime_genai  # noqa: F401  (ImportError before the builder runs: the peer is skipped)

        out = os.path.join(root, "ort-genai")
        cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", folder, "-o", out, "-p", "fp32",
               "-e", "cpu", "-c", os.path.join(root, "ort-genai-cache")]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise GenzipError(f"onnxruntime-genai's model builder failed: {done.stderr.strip().splitlines()[-1:]}",
                              "run it by hand to see why: " + " ".join(cmd))
        return cls(out, threads, copies=1)

    @classmethod
    def artifact(cls, folder: str, threads: int) -> OrtGenai | None:
        path = os.path.join(folder, "genai_config.json")
        if not os.path.isfile(path):
            return None  # kv-quant's int8 cache: not its layout (the manifest's genai.why_not)
        with open(path) as f:
            shared = json.load(f)["search"].get("past_present_share_buffer", False)
        return cls(folder, threads, copies=1 if shared else 2)

    def run(self, ids: np.ndarray, new: int) -> tuple[float, int]:
        og = self.og
        length = ids.shape[1] + new
        params = og.GeneratorParams(self.model)
        params.set_search_options(max_length=length, min_length=length, do_sample=False)
        gen = og.Generator(self.model, params)
        gen.append_tokens(ids[0].astype(np.int32))
        gen.generate_next_token()  # the first new token (from the prefill)
        start = time.perf_counter()
        for _ in range(new - 1):
            gen.generate_next_token()
        elapsed = time.perf_counter() - start
        return (new - 1) / elapsed, self.per_token * length

class Eager:
    """transformers eager (its default SDPA attention) with a DynamicCache."""

    def __init__(self, folder: str, threads: int):
        import torch
        import transformers

        torch.set_num_threads(threads)
        self.torch = torch
        self.model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        self.version = transformers.__version__

    def run(self, ids: np.ndarray, new: int, chunk: int) -> tuple[float, int]:
        torch = self.torch
        with torch.no_grad():
            from transformers import DynamicCache

            cache = DynamicCache()
            x = torch.from_numpy(ids)
            for i in range(0, x.shape[1], chunk):
                out = self.model(input_ids=x[:, i:i + chunk], past_key_values=cache, use_cache=True)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            start = time.perf_counter()
            for _ in range(new - 1):
                out = self.model(input_ids=token, past_key_values=cache, use_cache=True)
                token = out.logits[:, -1].argmax(-1, keepdim=True)
            elapsed = time.perf_counter() - start
        kv = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
        return (new - 1) / elapsed, kv


# ---- the benchmark -----------------------------------------------------------------------

def speed(args, root: str, contexts: list[int], variants: list[str], peers: list[str]) -> tuple[list, dict, dict]:
    max_positions = max(contexts) + args.new_tokens
    folder = speed_folder(root, args, max_positions)
    engines, skipped = {}, {}
    seqs = [c + args.new_tokens for c in contexts]
    lms = compile_variants(folder, variants, root, "speed", args.threads, seqs)
    for name, by_seq in lms.items():
        engines[f"genzip-{name}"] = lambda ids, by_seq=by_seq: run_genzip(by_seq[ids.shape[1] + args.new_tokens], ids,
                                                                          args.new_tokens, args.prefill_chunk)
    if "ort-genai" in peers:
        try:
            og = OrtGenai.build(folder, root, args.threads)
            engines["ort-genai"] = lambda ids: og.run(ids, args.new_tokens)
            # genzip's own artifacts in onnxruntime-genai's C++ loop (their genai_config.json)
            for name, by_seq in lms.items():
                # one artifact per context for MoA; they carry no genai_config (evicting cache)
                runner = OrtGenai.artifact(by_seq[seqs[0]].folder, args.threads)
                if runner is not None:
                    engines[f"genzip-{name}@ort-genai"] = lambda ids, r=runner: r.run(ids, args.new_tokens)
        except ImportError:
            skipped["ort-genai"] = "onnxruntime-genai is not installed (pip install 'genzip[bench]')"
    if "transformers" in peers:
        eager = Eager(folder, args.threads)
        engines["transformers"] = lambda ids: eager.run(ids, args.new_tokens, args.prefill_chunk)
    rng = np.random.default_rng(args.seed)
    prompts = {c: rng.integers(1, 1024, size=(1, c), dtype=np.int64) for c in contexts}
    rates: dict[tuple[str, int], list[float]] = {}
    kv: dict[tuple[str, int], int] = {}
    for _ in range(args.rounds):
        for c in contexts:
            for name, run in engines.items():
                rate, kv[(name, c)] = run(prompts[c])
                rates.setdefault((name, c), []).append(rate)
    rows = []
    for (name, c), values in rates.items():
        base = statistics.median(rates[("genzip-fp32", c)]) if ("genzip-fp32", c) in rates else None
        median = statistics.median(values)
        rows.append({"engine": name, "context": c, "tokens_per_s": round(median, 2),
                     "rounds": [round(v, 2) for v in values], "kv_bytes": kv[(name, c)],
                     "vs_genzip_fp32": round(median / base, 3) if base else None})
    model = {"hidden": args.hidden, "layers": args.layers, "heads": args.heads, "kv_heads": args.kv_heads,
             "intermediate": args.intermediate, "vocab": 1024, "max_positions": max_positions,
             "weights": f"random (seed {args.seed})"}
    return rows, skipped, model


def _ppl_chunk(variant: str) -> int:
    return 1 if variant.startswith("cskv") else 128


def perplexity_rows(args, root: str, ppl_contexts: list[int], variants: list[str]) -> list[dict]:
    from genzip.runtime import _eval_data
    from genzip.runtime._eval_llm import log_softmax, perplexity

    if args.moa_plan:
        variants = [*variants, "moa-plan"]
    lms = compile_variants(str(_eval_data.weights_folder(TRAINED)), variants, root, "ppl", args.threads,
                           ppl_contexts, os.path.abspath(args.moa_plan) if args.moa_plan else None)
    limit = next(iter(next(iter(lms.values())).values())).spec["max_positions"]
    tok = _eval_data.tokenizer(TRAINED)
    rows = []
    for c in ppl_contexts:
        if c > limit:
            rows.append({"context": c, "perplexity": None,
                         "why": f"{TRAINED} has {limit} positions (trained on 128-token windows)"})
            continue
        windows = _eval_data.heldout_token_windows(tok, c, args.ppl_windows)
        ppl = {name: perplexity(log_softmax(by_seq[c].score(windows, chunk=_ppl_chunk(name)).astype(np.float64)),
                                windows) for name, by_seq in lms.items()}
        for name, value in ppl.items():
            rows.append({"variant": name, "context": c, "windows": len(windows), "chunk": _ppl_chunk(name),
                         "kv_bytes": lms[name][c].new_cache(1, c).bytes, "perplexity": round(value, 3),
                         "vs_fp32": round(value / ppl["fp32"] - 1, 5) if "fp32" in ppl else None})
    return rows


def run(args: argparse.Namespace) -> int:
    contexts = _ints(args.contexts, "contexts")
    ppl_contexts = _ints(args.ppl_contexts, "ppl-contexts")
    variants = _names(args.variants, [*VARIANTS, *MOA_FORMS], "variants")
    peers = _names(args.peers, PEERS, "peers")
    if args.new_tokens < 2:
        raise GenzipError(f"--new-tokens {args.new_tokens} leaves no decode step to time", "pass 2 or more")
    if "fp32" not in variants:
        variants = ["fp32", *variants]  # the reference of every ratio
    load_before = os.getloadavg()
    root = args.work or tempfile.mkdtemp(prefix="genzip-bench-decode-")
    os.makedirs(root, exist_ok=True)
    try:
        rows, skipped, model = speed(args, root, contexts, variants, peers) if contexts else ([], {}, None)
        ppl = perplexity_rows(args, root, ppl_contexts, variants) if ppl_contexts else []
    finally:
        if args.work is None:
            shutil.rmtree(root, ignore_errors=True)
    result = {"speed": rows, "perplexity": ppl, "skipped": skipped, "speed_model": model,
              "new_tokens": args.new_tokens, "rounds": args.rounds, "threads": args.threads,
              "loadavg_before": [round(x, 2) for x in load_before],
              "loadavg_after": [round(x, 2) for x in os.getloadavg()]}
    if args.json:
        print(json.dumps(result))
        return 0
    for row in rows:
        print(f"{row['engine']:>18} ctx {row['context']:>6}: {row['tokens_per_s']:8.2f} tok/s "
              f"(x{row['vs_genzip_fp32']} vs genzip-fp32)  KV {row['kv_bytes'] / 2**20:8.2f} MiB")
    for row in ppl:
        if row.get("perplexity") is None:
            print(f"perplexity ctx {row['context']}: n/a ({row['why']})")
        else:
            print(f"perplexity {row['variant']:>10} ctx {row['context']:>4}: {row['perplexity']:.3f} "
                  f"({100 * row['vs_fp32']:+.2f}% vs fp32)  KV {row['kv_bytes'] / 2**10:.1f} KiB")
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return _common.main("bench_decode.py", __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
