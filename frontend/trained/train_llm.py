"""Train a trained-LM preset (``trained-llama`` or ``trained-moe``) on the King James Bible.

Run: ``python -m genzip.frontend.trained.train_llm --preset trained-llama --out frontend/trained/weights/trained-llama``
(``--tokenizer-from DIR`` reuses the tokenizer of an earlier run, so both LMs share ids).

Deterministic (seeded, one thread, deterministic kernels). Writes a transformers
folder (``config.json``, ``model.safetensors`` in FP16, ``generation_config.json``,
``tokenizer.json``, ``tokenizer_config.json``) and ``manifest.json``. The recorded
perplexities are measured on the folder as reloaded in FP32, i.e. on the
committed FP16 weights, not on the in-memory FP32 training copy.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from genzip.frontend.trained import _kjv, _lm, _manifest, _schedule


def _loss(model, window: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy, plus the router load-balancing term for a mixture of experts."""
    moe = hasattr(model.config, "num_local_experts")
    out = model(input_ids=window[:, :-1], output_router_logits=True) if moe else model(input_ids=window[:, :-1])
    logits = out.logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), window[:, 1:].reshape(-1))
    if moe:
        # Without it the router collapses onto one or two experts and the others go untrained.
        loss = loss + model.config.router_aux_loss_coef * out.aux_loss
    return loss


def train(model, train_ids: torch.Tensor, *, steps: int, batch: int, seed: int, lr: float) -> float:
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    generator = torch.Generator().manual_seed(seed + 1)
    offsets = torch.arange(_lm.SEQ_LEN + 1)
    running = None
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = _schedule.warmup_cosine(step, steps, lr)
        starts = torch.randint(0, len(train_ids) - _lm.SEQ_LEN - 1, (batch, 1), generator=generator)
        window = train_ids[starts + offsets]
        loss = _loss(model, window)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        value = loss.item()
        running = value if running is None else 0.98 * running + 0.02 * value
        if step % 50 == 0 or step == steps - 1:
            print(f"lm step {step} loss {value:.4f} smoothed {running:.4f}", flush=True)
    return running


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(_lm.CONFIGS), required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tokenizer-from", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    os.environ["RAYON_NUM_THREADS"] = "1"  # the BPE trainer's thread pool; one thread keeps it reproducible
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    start = time.time()

    import transformers

    train_docs, held_docs = _kjv.split("train"), _kjv.split("heldout")
    if args.tokenizer_from is None:
        tokenizer = _lm.train_tokenizer(train_docs)
    else:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(args.tokenizer_from))
    train_ids, held_ids = _lm.encode(tokenizer, train_docs), _lm.encode(tokenizer, held_docs)
    print(f"tokens: train {len(train_ids)}, held-out {len(held_ids)}", flush=True)

    model = _lm.build(args.preset, args.seed)
    final_loss = train(model, train_ids, steps=args.steps, batch=args.batch, seed=args.seed, lr=args.lr)
    train_seconds = time.time() - start

    args.out.mkdir(parents=True, exist_ok=True)
    model.eval().to(torch.float16).save_pretrained(str(args.out))
    tokenizer.save_pretrained(str(args.out))
    reloaded, _ = _lm.load(args.out)
    held_ppl = _lm.perplexity(reloaded, held_ids)
    unigram_ppl = _lm.unigram_perplexity(train_ids, held_ids)
    random_ppl = _lm.perplexity(_lm.build(args.preset, args.seed + 100).eval(), held_ids[: 64 * _lm.SEQ_LEN])
    print(f"held-out perplexity {held_ppl:.3f}; unigram {unigram_ppl:.3f}; random init {random_ppl:.3f}")
    class_name, config = _lm.CONFIGS[args.preset]
    _manifest.write_manifest(args.out, {
        "preset": args.preset,
        "class": f"transformers.{class_name}",
        "config": config,
        "weights_dtype": "float16",
        "seq_len": _lm.SEQ_LEN,
        "data": {"package": _kjv.SOURCE, "version": _manifest.package_version(_kjv.SOURCE),
                 "text": "King James Bible (Project Gutenberg #10, public domain), DATA/Bible.db",
                 "preprocess": "verse references stripped; one document per chapter, prefixed by <|endoftext|>"},
        "tokenizer": {"kind": "byte-level BPE (HF tokenizers)", "vocab_size": _lm.VOCAB,
                      "trained_on": "train split" if args.tokenizer_from is None else f"reused from {args.tokenizer_from.name}"},
        "split": _kjv.SPLIT_RULE,
        "tokens": {"train": len(train_ids), "heldout": len(held_ids)},
        "steps": args.steps, "batch": args.batch, "lr": args.lr, "seed": args.seed,
        "final_loss": final_loss,
        "train_seconds": round(train_seconds, 1),
        "quality": {
            "heldout_perplexity": held_ppl,
            "unigram_perplexity": unigram_ppl,
            "random_init_perplexity": random_ppl,
            "note": "perplexity over non-overlapping 128-token windows of the held-out ids; unigram: add-one, fitted on train ids",
        },
    })


if __name__ == "__main__":
    main()
