"""``python benchmarks/bench_mixed.py``: does the sensitivity-driven MILP allocation beat simple ones?

    python benchmarks/bench_mixed.py [MODEL] [--formats LOW,HIGH] [--samples N] [--heldout N] [--random N] [--real] [--json]

One process, one preset export (``MODEL``: ``bench-dit``, ``tiny-llama`` or ``trained-llama``). Every
allocation mixes the two ``--formats`` (default ``w4a16`` and ``w8a8``) over the
layers ``annotate-precision`` marks quantizable, at the same average weight bits:

* ``naive``: 8 bits for the first and last quarter of the layers (graph order), 4
  elsewhere; its parameter-weighted average is the budget every other row gets;
* ``random``: the mean of ``--random`` allocations (seeded): layers in random order
  take the high format while the budget allows;
* ``milp``: ``sensitivity`` on the calibration set, then ``bit_allocation.allocate``
  under that budget with ``mixed-precision``'s objective (``auto``; LLMs also ``grad``).

Evaluation is on held-out inputs (a separately seeded set, never the calibration
set; for the trained LMs real held-out text: the first ``--heldout`` windows of the King
James held-out chapters, which the model never trained on, where calibration and
``sensitivity`` read training-split text, and each row also gets its held-out
perplexity): each allocation's gates are set in the gated ORT session of
``sensitivity_probe`` (the arithmetic of the quantized graph, checked against
``quant`` in tests/test_sensitivity.py), metrics vs the FP32 export. Diffusion:
SQNR (dB, higher is better) and content (1 − cos of low-passed outputs); LLMs: KL of
logits and logit SQNR.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import _common
import numpy as np

from genzip.errors import GenzipError
from genzip.passes.precision._metrics import sqnr_db


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default="tiny-llama", help="bench-dit, tiny-llama or trained-llama")
    p.add_argument("--formats", default="w4a16,w8a8", help="LOW,HIGH formats to mix (default w4a16,w8a8)")
    p.add_argument("--samples", type=int, default=2, help="calibration samples per sensitivity run")
    p.add_argument("--heldout", type=int, default=4, help="held-out evaluation samples")
    p.add_argument("--random", type=int, default=5, help="random allocations to average")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--real", action="store_true",
                   help="also build the real quantized graph (plan -> calibrate -> quant) "
                        "for the single-allocation rows")
    p.add_argument("--json", action="store_true")


def _naive(n: int, low: str, high: str) -> list[str]:
    q = n // 4
    return [high if i < q or i >= n - q else low for i in range(n)]


def _random(params: np.ndarray, low: str, high: str, lo_bits: float, hi_bits: float, budget: float, rng) -> list[str]:
    out, spent, total = [low] * len(params), float((params * lo_bits).sum()), budget * params.sum()
    for i in rng.permutation(len(params)):
        extra = params[i] * (hi_bits - lo_bits)
        if spent + extra <= total + 1e-9:
            out[i], spent = high, spent + extra
    return out


def _heldout(source, name: str, seed: int, n: int):
    from genzip.frontend.calibration import preset_calibration
    from genzip.frontend.presets import get_preset

    spec = get_preset(name)
    if name in _TRAINED_LMS:
        # Real held-out text (the split the model never trained on), as genzip eval scores it.
        from genzip.runtime import _eval_data

        ids = source.example_inputs["input_ids"]
        windows = _eval_data.heldout_token_windows(_eval_data.tokenizer(name), ids.shape[1], n * ids.shape[0])
        return [{"input_ids": w.reshape(ids.shape).astype(ids.dtype)}
                for w in windows[: len(windows) // ids.shape[0] * ids.shape[0]].reshape(-1, *ids.shape)]
    gen = preset_calibration(source.info["module"], spec.family, batch=source.info["batch"],
                             seed=seed + 5000, like=source.example_inputs, text_len=spec.text_len, seq_len=spec.seq_len)
    samples = gen()
    return [samples[i] for i in np.linspace(0, len(samples) - 1, min(n, len(samples))).round().astype(int)]


def _perplexity(held, outs) -> float:
    """exp(mean next-token NLL) over the held-out windows (first token of each unscored)."""
    from genzip.runtime._eval_llm import log_softmax, perplexity

    ids = np.concatenate([f["input_ids"] for f in held])
    return perplexity(log_softmax(np.concatenate(outs).reshape(*ids.shape, -1)), ids)


_TRAINED_LMS = ("trained-llama", "trained-moe")


def _predicted(body: dict, group: list[list[str]], metric: str) -> float:
    """Mean over ``group`` of Σ_l cost[l, chosen format] (SQNR: the dB of the summed noise ratio)."""
    fmts = body["formats"]
    sums = [sum(layer["cost"][metric][fmts.index(f)] for layer, f in zip(body["layers"], a)) for a in group]
    total = float(np.mean(sums))
    return sqnr_db(total) if metric == "sqnr" else total


def _allocations(body: dict, params: np.ndarray, low: str, high: str, n_random: int, seed: int):
    """(budget bits, label -> allocations): naive, random at its budget, MILP per objective."""
    from genzip.passes.precision._bit_allocation import allocate
    from genzip.passes.precision.mixed_precision import cost_matrix
    from genzip.passes.quant._formats import FORMATS

    lo_bits, hi_bits = FORMATS[low].weight_bits, FORMATS[high].weight_bits
    naive = _naive(len(params), low, high)
    budget = float((params * np.array([hi_bits if f == high else lo_bits for f in naive])).sum() / params.sum())
    rng = np.random.default_rng(seed)
    allocs = {"naive (first/last quarter 8-bit)": [naive],
              f"random (mean of {n_random})": [_random(params, low, high, lo_bits, hi_bits, budget, rng)
                                               for _ in range(n_random)]}
    bits = np.array([FORMATS[f].weight_bits for f in body["formats"]], np.float64)
    for objective in ("auto", *(["grad"] if "grad" in body["metrics"] else [])):
        cost = cost_matrix(body, objective)
        got = allocate(params, body["formats"], bits, np.nan_to_num(cost), avg_bits=budget, allowed=~np.isnan(cost))
        allocs[f"milp (objective={objective})"] = [list(got.formats)]
    return budget, allocs


def _real_outputs(fp_bytes: bytes, keys: list[str], alloc: list[str], calib, held, out_name: str, folder: str):
    """Held-out outputs of the real graph: annotate-precision{plan},calibrate,quant (ORT, default optimizations)."""
    import onnx
    import onnx_ir as ir

    from genzip.ort_session import make_session
    from genzip.passes import build_pipeline, run_pipeline
    from genzip.passes.infra.context import PassContext
    from genzip.passes.quant._plan import write_plan

    plan = os.path.join(folder, "plan.json")
    write_plan(plan, dict(zip(keys, alloc)), {})
    model = ir.from_proto(onnx.ModelProto.FromString(fp_bytes))
    run_pipeline(model, build_pipeline(f"annotate-precision{{plan={plan}}},calibrate{{use-cache=false}},quant"),
                 context=PassContext(calibration=calib))
    session = make_session(ir.to_proto(model).SerializeToString())
    return [session.run([out_name], f)[0] for f in held]


def run(args) -> int:
    import onnx
    import onnx_ir as ir

    from genzip.frontend import load_model
    from genzip.metadata import SENSITIVITY_KEY
    from genzip.ort_session import make_session
    from genzip.passes import build_pipeline, run_pipeline
    from genzip.passes.infra.context import PassContext
    from genzip.passes.precision import _metrics as sm
    from genzip.passes.precision import _probe as probe
    from genzip.passes.quant._formats import FORMATS
    from genzip.passes.quant._spec import annotated_nodes

    low, _, high = args.formats.partition(",")
    if low not in FORMATS or high not in FORMATS:
        raise GenzipError(f"--formats {args.formats} must name two of {', '.join(FORMATS)}",
                          "e.g. --formats w4a16,w8a8")
    source = load_model(args.model, seed=args.seed)
    if "calibration" not in source.info:
        raise GenzipError(f"{args.model} has no calibration inputs", "use a preset (bench-dit, tiny-llama)")
    calib = source.info["calibration"]()
    fp_bytes = ir.to_proto(source.model).SerializeToString()
    model = ir.from_proto(onnx.ModelProto.FromString(fp_bytes))
    t0 = time.perf_counter()
    spec = f"annotate-precision,sensitivity{{candidates={low},{high} samples={args.samples}}}"
    context = PassContext(example_inputs=source.example_inputs, calibration=calib,
                          torch_module=source.info.get("module"), seed=args.seed)
    records = run_pipeline(model, build_pipeline(spec), context=context)
    t_sens = time.perf_counter() - t0
    body = json.loads(model.metadata_props[SENSITIVITY_KEY])
    layers = [n for n, s in annotated_nodes(model) if s.keep is None]
    params = np.array([layer["params"] for layer in body["layers"]], np.float64)
    budget, allocs = _allocations(body, params, low, high, args.random, args.seed)
    # Held-out evaluation in the gated session (activation ranges from the whole calibration set).
    base = ir.from_proto(onnx.ModelProto.FromString(fp_bytes))
    idx = [list(model.graph).index(n) for n in layers]
    amax, _ = probe.activation_amax(base, sorted({list(base.graph)[i].inputs[0].name for i in idx}), calib)
    gates = probe.build_gated(base, idx, [low, high], amax, 32)
    session = make_session(ir.to_proto(base).SerializeToString())
    out_name = source.model.graph.outputs[0].name
    held = _heldout(source, args.model, args.seed, args.heldout)
    refs = [make_session(fp_bytes).run([out_name], f)[0] for f in held]
    metrics = ("sqnr", "content") if body["family"] == "diffusion" else ("kl", "sqnr")
    shown = (*metrics, "perplexity") if args.model in _TRAINED_LMS else metrics
    keys = [layer["key"] for layer in body["layers"]]

    def score(outs_per_alloc: list[list[np.ndarray]]) -> dict[str, float]:
        out = {}
        for m in metrics:
            v = float(np.mean([sm.measure(m, refs, outs) for outs in outs_per_alloc]))
            out[m] = sm.sqnr_db(v) if m == "sqnr" else v
        if args.model in _TRAINED_LMS:
            out["perplexity"] = float(np.mean([_perplexity(held, outs) for outs in outs_per_alloc]))
        return out

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for label, group in allocs.items():
            sim = [[session.run([out_name], {**f, **probe.gate_feeds(gates, dict(enumerate(a)))})[0] for f in held]
                   for a in group]
            avg = np.mean([(params * [FORMATS[f].weight_bits for f in a]).sum() / params.sum() for a in group])
            row = {"allocation": label, "avg_weight_bits": round(float(avg), 3),
                   "n_high": float(np.mean([a.count(high) for a in group])),
                   **score(sim), "predicted": _predicted(body, group, metrics[0])}
            if args.real and len(group) == 1:
                row["real"] = score([_real_outputs(fp_bytes, keys, group[0], calib, held, out_name, folder)])
            rows.append(row)
    result = {"model": args.model, "formats": [low, high], "layers": len(layers), "budget_bits": round(budget, 4),
              "sensitivity_runs": records[1].stats.get("runs"), "sensitivity_s": round(t_sens, 1),
              "calibration_samples": len(calib), "heldout_samples": len(held), "rows": rows,
              "fp32_perplexity": _perplexity(held, refs) if args.model in _TRAINED_LMS else None,
              "heldout": "KJV held-out chapters" if args.model in _TRAINED_LMS else "seeded inputs",
              "note": "sqnr in dB (higher is better); content = 1 - cos of low-passed outputs, kl: lower is better"}
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        _print_table(result, shown, high, args.real)
    return 0


def _print_table(result: dict, metrics, high: str, real: bool) -> None:
    fmt = lambda m, v: f"{v:.2f}" if m in ("sqnr", "perplexity") else f"{v:.4g}"  # noqa: E731
    print(f"{result['model']}: {result['layers']} layers, {'/'.join(result['formats'])}, "
          f"budget {result['budget_bits']:.3f} avg weight bits; "
          f"sensitivity {result['sensitivity_runs']} runs in {result['sensitivity_s']:.0f} s; "
          f"{result['heldout_samples']} held-out samples ({result['heldout']})"
          + (f"; FP32 perplexity {result['fp32_perplexity']:.2f}" if result["fp32_perplexity"] else ""))
    names = [f"{m} (dB)" if m == "sqnr" else m for m in metrics]
    head = ["allocation", "avg weight bits", f"# {high}", *names, f"Σ single-layer {metrics[0]} (calibration)"]
    head += [f"{n}, real quant graph" for n in names] if real else []
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in result["rows"]:
        cells = [r["allocation"], f"{r['avg_weight_bits']:.3f}", f"{r['n_high']:.1f}"]
        cells += [fmt(m, r[m]) for m in metrics] + [fmt(metrics[0], r["predicted"])]
        if real:
            cells += [fmt(m, r["real"][m]) if "real" in r else "—" for m in metrics]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    sys.exit(_common.main("bench_mixed.py", __doc__, add_arguments, run))
