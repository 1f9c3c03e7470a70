"""``python benchmarks/probe_dynamic_axes.py``: which non-batch axes of the presets stay dynamic,
by torch.export alone and by genzip's ``--dynamic-axes`` export, the evidence behind README's
"Export sizes".

    python benchmarks/probe_dynamic_axes.py [--genzip] [--json]

torch.export rows (a ``Dim`` on the axis): tiny-pixart's caption axis
(``encoder_hidden_states`` axis 1) and latent height/width, tiny-dit's latent
height/width (patch 2: ``2*Dim``), tiny-llama's sequence axis. ``--genzip`` adds, per
preset and axis kind, genzip's own export (``load_model(..., axes=DynamicAxes.parse(KIND))``:
torch.export, the ONNX exporter, the check against eager PyTorch at a second size) and,
when it keeps the axis dynamic, the largest absolute error of ONNX Runtime vs eager
PyTorch at two more sizes (batch 2) and the export's wall time. Each row: the axis,
``dynamic`` or ``static``, and the first error line when static.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import _common

# preset, kind, the two extra sizes checked (caption tokens, latent size, tokens)
_GENZIP = (("tiny-pixart", "text", (3, 13)), ("tiny-pixart", "size", (8, 24)), ("tiny-dit", "size", (8, 24)),
           ("tiny-llama", "seq", (5, 40)))
_ERRORS = (RuntimeError, AssertionError, ValueError, TypeError, NotImplementedError)


def _probes():
    import torch

    from genzip.frontend import hf_inputs
    from genzip.frontend.presets import _build_module, get_preset

    dim = torch.export.Dim
    for name in ("tiny-pixart", "tiny-dit"):
        spec = get_preset(name)
        torch.manual_seed(0)
        module = _build_module(spec).eval()
        args, kwargs = hf_inputs.diffusers_call(module, batch=2, seed=0, text_len=spec.text_len or 8)
        batch = dim("batch", min=1)
        base = {k: ({0: batch} if hasattr(v, "shape") else None) for k, v in kwargs.items()}
        if "encoder_hidden_states" in kwargs:
            text = {0: batch, 1: dim("text", min=2, max=512)}  # the prompt mask shares the caption axis
            masked = {"encoder_attention_mask": text} if "encoder_attention_mask" in kwargs else {}
            yield f"{name} caption tokens", module, (args, kwargs), dict(base, encoder_hidden_states=text, **masked)
        patch = int(spec.config.get("patch_size", 1))
        h, w = dim("h", min=1, max=64), dim("w", min=1, max=64)
        yield f"{name} latent height/width", module, (args, kwargs), dict(
            base, hidden_states={0: batch, 2: patch * h if patch > 1 else h, 3: patch * w if patch > 1 else w})
    spec = get_preset("tiny-llama")
    torch.manual_seed(0)
    module = _build_module(spec).eval()
    args, kwargs = hf_inputs.causal_lm_call(module, batch=2, seed=0, seq_len=spec.seq_len)
    yield "tiny-llama sequence", module, (args, kwargs), {
        "input_ids": {0: dim("batch", min=1), 1: dim("seq", min=2, max=128)}, "use_cache": None}


def _first(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _other_call(module, kind: str, size: int):
    from genzip.frontend import hf_inputs

    if kind == "seq":
        return hf_inputs.causal_lm_call(module, batch=2, seed=size, seq_len=size)
    if kind == "text":
        return hf_inputs.diffusers_call(module, batch=2, seed=size, text_len=size)
    return hf_inputs.diffusers_call(module, batch=2, seed=size, text_len=8, height=size, width=size)


def _genzip_rows():
    import numpy as np
    import torch

    from genzip.errors import GenzipError
    from genzip.frontend import load_model
    from genzip.frontend.dynamic_axes import DynamicAxes
    from genzip.frontend.verify import run_onnx

    for preset, kind, sizes in _GENZIP:
        row = {"axis": f"{preset} {kind}", "probe": "genzip --dynamic-axes"}
        start = time.perf_counter()
        try:
            source = load_model(preset, axes=DynamicAxes.parse(kind))
        except GenzipError as e:
            yield dict(row, result="static", error=e.problem, export_s=round(time.perf_counter() - start, 1))
            continue
        row.update(result="dynamic", export_s=round(time.perf_counter() - start, 1), max_abs_err={})
        module = source.info["module"]
        for size in sizes:
            _, kwargs = _other_call(module, kind, size)
            with torch.no_grad():
                out = module(**kwargs)
            expected = (out.logits if hasattr(out, "logits") else out[0]).numpy()
            feeds = {k: v.numpy() for k, v in kwargs.items() if isinstance(v, torch.Tensor)}
            (got,) = run_onnx(source.model, feeds, preset)[:1]
            row["max_abs_err"][str(size)] = float(np.abs(got - expected).max())
        yield row


def _run(args: argparse.Namespace) -> int:
    import torch

    rows = []
    for axis, module, (call_args, call_kwargs), shapes in _probes():
        try:
            torch.export.export(module, call_args, call_kwargs, dynamic_shapes=shapes, strict=False)
            rows.append({"axis": axis, "probe": "torch.export", "result": "dynamic"})
        except _ERRORS as e:
            rows.append({"axis": axis, "probe": "torch.export", "result": "static",
                         "error": f"{type(e).__name__}: {_first(e)}"})
    if args.genzip:
        rows += list(_genzip_rows())
    if args.json:
        sys.stdout.write(json.dumps(rows, indent=1) + "\n")
    else:
        for row in rows:
            extra = f"  ({row['error']})" if "error" in row else f"  max abs err {row['max_abs_err']}" \
                if "max_abs_err" in row else ""
            sys.stdout.write(f"{row['probe']}: {row['axis']}: {row['result']}{extra}\n")
    return 0


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--genzip", action="store_true",
                   help="also export each axis with genzip --dynamic-axes and check ONNX Runtime at two more sizes")
    p.add_argument("--json", action="store_true", help="one JSON list of {axis, probe, result, error, ...}")


if __name__ == "__main__":
    sys.exit(_common.main("probe_dynamic_axes", __doc__, _arguments, _run))
