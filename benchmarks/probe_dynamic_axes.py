"""``python benchmarks/probe_dynamic_axes.py``: which non-batch axes of the presets torch.export
can keep dynamic (a ``Dim`` on the axis), the evidence behind README's "Export sizes".

    python benchmarks/probe_dynamic_axes.py [--json]

Probes, on the random-weight presets: tiny-pixart's caption axis
(``encoder_hidden_states`` axis 1) and latent height/width, tiny-dit's latent
height/width (patch 2: ``2*Dim``), tiny-llama's sequence axis. Each line: the axis,
``dynamic`` or ``static``, and torch.export's first error line when static. This is
torch.export only; genzip still exports these axes static (see README).
"""

from __future__ import annotations

import argparse
import json
import sys

import _common


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
            yield f"{name} caption tokens", module, (args, kwargs), dict(
                base, encoder_hidden_states={0: batch, 1: dim("text", min=2, max=512)})
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


def _run(args: argparse.Namespace) -> int:
    import torch

    rows = []
    for axis, module, (call_args, call_kwargs), shapes in _probes():
        try:
            torch.export.export(module, call_args, call_kwargs, dynamic_shapes=shapes, strict=False)
            rows.append({"axis": axis, "result": "dynamic"})
        except (RuntimeError, AssertionError, ValueError, TypeError, NotImplementedError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            rows.append({"axis": axis, "result": "static", "error": f"{type(e).__name__}: {first}"})
    if args.json:
        sys.stdout.write(json.dumps(rows, indent=1) + "\n")
    else:
        for row in rows:
            sys.stdout.write(f"{row['axis']}: {row['result']}{'  (' + row['error'] + ')' if 'error' in row else ''}\n")
    return 0


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="one JSON list of {axis, result, error}")


if __name__ == "__main__":
    sys.exit(_common.main("probe_dynamic_axes", __doc__, _arguments, _run))
