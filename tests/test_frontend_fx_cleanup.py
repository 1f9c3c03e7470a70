"""FX cleanup removes provable no-ops (the squeeze-of-a-non-1-dim ORT load failure)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import torch

from genzip.frontend.fx_cleanup import remove_noop_ops

aten = torch.ops.aten


class NoOps(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(8, 8)

    def forward(self, x):  # x: [B, 256, 8]
        y = self.proj(x).squeeze(1)  # dim 1 is 256: a no-op in PyTorch
        y = y.reshape(y.shape)  # same shape
        y = y.contiguous().to(torch.float32)
        y = y.transpose(2, 2)
        return y.unsqueeze(1).squeeze(1) * 2  # a real squeeze stays


def _targets(ep) -> list:
    return [n.target for n in ep.graph.nodes if n.op == "call_function"]


def test_removes_noop_squeeze_and_friends():
    x = torch.randn(2, 256, 8)
    module = NoOps().eval()
    ep = torch.export.export(module, (x,), strict=False)
    before = _targets(ep)
    assert before.count(aten.squeeze.dim) == 2
    removed = remove_noop_ops(ep)
    after = _targets(ep)
    assert removed.get("aten.squeeze.dim") == 1
    assert after.count(aten.squeeze.dim) == 1  # the squeeze of the size-1 dim is real
    assert aten.transpose.int not in after
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x), module(x))


def test_cleaned_export_loads_in_ort():
    torch.manual_seed(0)
    module = NoOps().eval()
    x = torch.randn(2, 256, 8)
    ep = torch.export.export(module, (x,), strict=False)
    remove_noop_ops(ep)
    model = torch.onnx.export(ep, dynamo=True, opset_version=23, verbose=False).model
    squeezes = [n for n in model.graph if n.op_type == "Squeeze"]
    assert len(squeezes) <= 1
    sess = ort.InferenceSession(ir.to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {model.graph.inputs[0].name: x.numpy()})
    with torch.no_grad():
        ref = module(x).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_keeps_copies_when_graph_mutates():
    class Mutates(torch.nn.Module):
        def forward(self, x):
            y = x.clone()
            y.add_(1)
            return y

    ep = torch.export.export(Mutates(), (torch.randn(3, 4),), strict=False)
    remove_noop_ops(ep)
    assert aten.clone.default in _targets(ep)
    x = torch.zeros(3, 4)
    assert torch.equal(ep.module()(x), torch.ones(3, 4)) and torch.equal(x, torch.zeros(3, 4))
