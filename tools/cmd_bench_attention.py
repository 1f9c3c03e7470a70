"""``genzip bench-attention``: dense ``Attention`` vs ``genzip.WindowAttention`` in ORT CPU.

Invariant: one process times both models interleaved (medians of ``--repeat``
runs each) and reports dense ms, window ms, the measured speedup and the exact
FLOP-ratio bound; ``--json`` prints one JSON object with at least ``dense_ms``,
``window_ms``, ``speedup`` (dense / window) and ``flop_bound`` (dense FLOPs /
window FLOPs).
"""

from __future__ import annotations

import argparse
import json
import sys

from genzip.errors import GenzipError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seq", type=int, required=True, help="sequence length N")
    parser.add_argument("--heads", type=int, default=8, help="attention heads H (default 8)")
    parser.add_argument("--dim", type=int, default=64, help="head dim D (default 64)")
    parser.add_argument("--window", default="0.125",
                        help="window w (|i-j| <= w): a fraction of N like 0.125, or a token count like 512")
    parser.add_argument("--batch", type=int, default=1, help="batch B (default 1)")
    parser.add_argument("--repeat", type=int, default=10, help="timed runs of each model (default 10)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs of each model first (default 1)")
    parser.add_argument("--threads", type=int, default=2, help="ORT intra-op threads (default 2)")
    parser.add_argument("--chunk", type=int, default=None, help="query chunk of the window body (default: chosen)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    from genzip.plugins import attention_bench

    for name in ("seq", "heads", "dim", "batch", "repeat", "threads"):
        if getattr(args, name) < 1:
            raise GenzipError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0 or (args.chunk is not None and args.chunk < 1):
        raise GenzipError("--warmup must be >= 0 and --chunk >= 1")
    try:
        window = attention_bench.resolve_window(args.window, args.seq)
    except ValueError as e:
        raise GenzipError(str(e), "write --window 0.125 or --window 512") from None
    result = attention_bench.run_benchmark(
        seq=args.seq, heads=args.heads, dim=args.dim, window=window, batch=args.batch,
        repeat=args.repeat, warmup=args.warmup, threads=args.threads, chunk=args.chunk,
    )
    out = sys.stdout
    if args.json:
        out.write(json.dumps(result) + "\n")
        return 0
    out.write(
        f"N={result['seq']} H={result['heads']} D={result['dim']} B={result['batch']} "
        f"w={result['window']} chunk={result['chunk']} threads={result['threads']}\n"
        f"dense   {result['dense_ms']:10.2f} ms\n"
        f"window  {result['window_ms']:10.2f} ms\n"
        f"speedup {result['speedup']:10.2f}x  (FLOP bound {result['flop_bound']:.2f}x, "
        f"{100 * result['efficiency']:.0f}% of it)\n"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m genzip.tools.cmd_bench_attention``) until the CLI wires it."""
    parser = argparse.ArgumentParser(prog="genzip bench-attention", description=__doc__.splitlines()[0])
    add_arguments(parser)
    try:
        return run(parser.parse_args(argv))
    except GenzipError as e:
        sys.stderr.write(f"error: {e}\n")
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
