"""``python benchmarks/bench_moe_dispatch.py``: MoE token-to-expert dispatch forms on ``trained-moe`` in ORT.

    python benchmarks/bench_moe_dispatch.py [--seqs 1,16,128] [--repeat 20] [--json]

One process. ``trained-moe`` (4 experts, top-2) exported twice, as a one-window forward
(no KV cache) of each ``--seqs`` length:

* **gather** (what genzip exports): transformers' ``batched_mm`` experts: each token
  gathers its top-2 experts' weights and runs them as one batched matmul, so no expert
  runs for a token not routed to it;
* **dense**: every expert runs on every token and the outputs are summed with the
  sparse top-2 routing weights (zero for unrouted experts): the same function, 2x the
  expert FLOPs here, no per-token weight gathers.

Both are timed interleaved (``--repeat`` rounds after one warm-up), median ms per call,
``dense_speedup`` = gather ms / dense ms; ``max_abs_diff`` of the logits checks they
compute the same function.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types

import _common
import numpy as np

from genzip.errors import GenzipError


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seqs", type=_ints, default=[1, 16, 128], help="tokens per call (default 1,16,128)")
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--json", action="store_true")


def _dense_forward(self, hidden_states, top_k_index, top_k_weights):
    """Every expert on every token, weighted by the (sparse) top-k routing weights."""
    import torch

    routing = torch.zeros(hidden_states.shape[0], self.num_experts, dtype=hidden_states.dtype)
    routing = routing.scatter(1, top_k_index, top_k_weights.to(hidden_states.dtype))  # [T, E]
    gate_up = torch.einsum("th,eoh->eto", hidden_states, self.gate_up_proj)
    gate, up = gate_up.chunk(2, dim=-1)
    out = torch.einsum("eti,ehi->eth", self.act_fn(gate) * up, self.down_proj)
    return (out * routing.T.unsqueeze(-1)).sum(0)


def run(args: argparse.Namespace) -> int:
    if not args.seqs or min(args.seqs) < 1 or args.repeat < 1:
        raise GenzipError("bench_moe_dispatch: --seqs must be positive integers and --repeat >= 1")
    import onnx_ir as ir
    import torch

    from genzip.frontend.hf_folder import exportable_experts
    from genzip.frontend.torch_export import export_or_fail
    from genzip.ort_session import make_session
    from genzip.searches.moe_experts import moe_blocks
    from genzip.tools.cmd_eep_search import load_moe

    torch.set_num_threads(2)
    module, _, _ = load_moe("trained-moe")
    rows = []
    for seq in args.seqs:
        ids = torch.randint(0, int(module.config.vocab_size), (1, seq), generator=torch.Generator().manual_seed(0))
        call = ((), {"input_ids": ids, "use_cache": False})
        sessions = {}
        for form in ("gather", "dense"):
            exportable_experts(module)
            for block in moe_blocks(module):
                if form == "dense":
                    block.experts.forward = types.MethodType(_dense_forward, block.experts)
                else:
                    block.experts.__dict__.pop("forward", None)
            exported = export_or_fail(module, call, dynamic=False, output_names=["logits"], what=f"{form} {seq}")
            sessions[form] = make_session(ir.to_proto(exported.model).SerializeToString(), threads=2)
        for block in moe_blocks(module):
            block.experts.__dict__.pop("forward", None)
        feed = {"input_ids": ids.numpy()}
        outs = {f: s.run(None, feed)[0] for f, s in sessions.items()}
        times: dict[str, list[float]] = {f: [] for f in sessions}
        for r in range(args.repeat + 1):
            for f, s in sessions.items():
                start = time.perf_counter()
                s.run(None, feed)
                if r:
                    times[f].append((time.perf_counter() - start) * 1e3)
        gather_ms, dense_ms = (float(np.median(times[f])) for f in ("gather", "dense"))
        rows.append({"seq": seq, "gather_ms": gather_ms, "dense_ms": dense_ms, "dense_speedup": gather_ms / dense_ms,
                     "max_abs_diff": float(np.abs(outs["gather"] - outs["dense"]).max())})
    if args.json:
        print(json.dumps({"preset": "trained-moe", "repeat": args.repeat, "rows": rows}))
        return 0
    for r in rows:
        print(f"seq {r['seq']}: gather {r['gather_ms']:.2f} ms, dense {r['dense_ms']:.2f} ms "
              f"(dense {r['dense_speedup']:.2f}x), max |diff| {r['max_abs_diff']:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(_common.main("bench_moe_dispatch.py", __doc__, add_arguments, run))
