"""``genzip generate ARTIFACT --prompt TEXT --max-new-tokens N [--json]``: text from a KV-cache LLM artifact."""

from __future__ import annotations

import argparse
import json
import sys

from genzip.errors import GenzipError
from genzip.tools.cli_common import add_provider_flags, providers_from


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact", help="artifact folder written by genzip-compile FOLDER --kv-cache")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="text, encoded with the artifact's tokenizer")
    src.add_argument("--input-ids", help="comma-separated token ids instead of a text prompt")
    p.add_argument("--max-new-tokens", type=int, default=32, help="new tokens at most (default 32)")
    p.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0: off")
    p.add_argument("--top-p", type=float, default=1.0, help="1.0: off")
    p.add_argument("--eos-token-id", type=int, default=None, help="default: the model's generation config")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="ORT intra-op threads")
    add_provider_flags(p)
    p.add_argument("--json", action="store_true", help="print JSON")


def _ids(text: str) -> list[list[int]]:
    try:
        return [[int(t) for t in text.split(",") if t.strip()]]
    except ValueError:
        raise GenzipError(f"--input-ids '{text}' is not a comma-separated list of integers",
                          "pass e.g. --input-ids 1,5,9") from None


def run(args: argparse.Namespace) -> int:
    from genzip.runtime.generate import CausalLM

    model = CausalLM(args.artifact, threads=args.threads, providers=providers_from(args))
    prompt = args.prompt if args.prompt is not None else _ids(args.input_ids)
    gen = model.generate(prompt, max_new_tokens=args.max_new_tokens, do_sample=args.do_sample,
                         temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                         eos_token_id=args.eos_token_id, seed=args.seed)
    result = gen.summary()
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
        return 0
    text = result["text"][0] if result["text"] is not None else " ".join(map(str, result["tokens"][0]))
    rate = result["decode_tokens_per_s"]
    sys.stdout.write(
        f"{text}\n"
        f"prefill: {result['prefill_s'] * 1000:.1f} ms; decode: "
        f"{f'{rate:.1f} tokens/s' if rate else 'n/a (one token)'}; new tokens: {result['new_tokens']}; "
        f"peak KV cache: {result['peak_kv_bytes']} bytes\n"
    )
    return 0
