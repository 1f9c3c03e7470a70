"""canonicalize-attn on files other exporters wrote, as a user hands them over: TorchScript
(``torch.onnx.export(..., dynamo=False)``) at opsets 14-20, untyped, scales computed in the
graph. The issue's case: a PixArt transformer at opset 17, where it found 0 of 4 attentions."""

from __future__ import annotations

import io

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from arch_models import BUILDERS, _Positional, export_dynamo

from genzip.ort_session import run_model
from genzip.passes import build_pipeline, run_pipeline


def _torchscript_file(name: str, opset: int) -> ir.Model:
    """The exporter's bytes as they would be saved, no shape inference or folding."""
    module, kwargs = BUILDERS[name]()
    names = [k for k, v in kwargs.items() if isinstance(v, torch.Tensor)]
    fixed = {k: v for k, v in kwargs.items() if not isinstance(v, torch.Tensor)}
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(_Positional(module, names, fixed).eval(), tuple(kwargs[n] for n in names), buf,
                          dynamo=False, opset_version=opset, input_names=names, output_names=["output"])
    return ir.from_proto(onnx.load_from_string(buf.getvalue()))


def _feeds(model: ir.Model) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {v.name: rng.standard_normal([int(d) for d in v.shape]).astype(v.dtype.numpy())
            if v.dtype.is_floating_point() else np.ones([int(d) for d in v.shape], v.dtype.numpy())
            for v in model.graph.inputs if not v.is_initializer()}


@pytest.mark.parametrize("opset", [14, 17, 20])
def test_pixart_torchscript_finds_every_attention(opset):
    model = _torchscript_file("pixart", opset)
    feeds = _feeds(model)
    before = run_model(model, feeds)["output"]
    records = run_pipeline(model, build_pipeline("canonicalize-attn,window-attn{window=0.25}"))
    canon, window = records[0].stats, records[1].stats
    assert (canon["attention_nodes"], canon["self"], canon["cross"]) == (4, 2, 2)
    assert window["nodes_replaced"] == 2
    scales = [n.attributes.get_float("scale") for n in model.graph if n.op_type == "Attention"]
    assert scales == pytest.approx([0.25] * 2)  # the cross ones left; 1/sqrt(16) folded from the graph's Sqrt/Div/Cast chain
    after = run_model(model, feeds)["output"]
    cos = float(np.dot(before.ravel(), after.ravel()) / np.linalg.norm(before) / np.linalg.norm(after))
    assert cos > 0.99  # a 0.25-window changes the numbers a little, not the function


def test_pixart_both_exporters_give_the_same_canonical_attention():
    counts = {}
    for exporter, model in (("dynamo", export_dynamo("pixart")), ("torchscript", _torchscript_file("pixart", 17))):
        (record,) = run_pipeline(model, build_pipeline("canonicalize-attn"))
        counts[exporter] = (record.stats["attention_nodes"], record.stats["self"], record.stats["cross"])
    assert counts == {"dynamo": (4, 2, 2), "torchscript": (4, 2, 2)}
