"""Small hand-built models and helpers for the quantization tests."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import onnx_ir as ir

from genzip.ort_session import make_session
from genzip.passes import build_pipeline
from genzip.passes.infra.context import PassContext

F = onnx.TensorProto.FLOAT


def _model(nodes, inputs, outputs, inits, opset: int = 23) -> ir.Model:
    graph = oh.make_graph(nodes, "g", inputs, outputs, [onh.from_array(a, n) for n, a in inits.items()])
    proto = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)], ir_version=10)
    return ir.from_proto(proto)


def mlp(seed: int = 0, tokens: int = 8, dims=(16, 32, 16, 8), opset: int = 23, outlier: float = 1.0) -> ir.Model:
    """x[2, tokens, d0] -> MatMul -> Relu -> MatMul -> ... (node names mm0, mm1, ...).

    ``outlier`` scales a few input channels of the second GEMM's activation
    (planted outliers)."""
    rng = np.random.default_rng(seed)
    inits, nodes, x = {}, [], "x"
    for i, (k, n) in enumerate(zip(dims[:-1], dims[1:])):
        inits[f"w{i}"] = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
        if i == 1 and outlier != 1.0:
            gain = np.ones(k, np.float32)
            gain[:3] = outlier
            inits["gain"] = gain
            nodes.append(oh.make_node("Mul", [x, "gain"], ["x_gain"], name="plant"))
            x = "x_gain"
        out = "y" if i == len(dims) - 2 else f"h{i}"
        nodes.append(oh.make_node("MatMul", [x, f"w{i}"], [f"m{i}" if out != "y" else "y"], name=f"mm{i}"))
        if out != "y":
            nodes.append(oh.make_node("Relu", [f"m{i}"], [out], name=f"relu{i}"))
        x = out
    inputs = [oh.make_tensor_value_info("x", F, [2, tokens, dims[0]])]
    outputs = [oh.make_tensor_value_info("y", F, [2, tokens, dims[-1]])]
    return _model(nodes, inputs, outputs, inits, opset)


def ln_mlp(seed: int = 0, outlier: float = 80.0, tokens: int = 16, k: int = 64) -> ir.Model:
    """x -> LayerNorm (a few channels' gain x ``outlier``: planted activation outliers)
    -> MatMul (whose rows for those channels are / ``outlier``) -> Relu -> MatMul -> y."""
    rng = np.random.default_rng(seed)
    gamma = (1.0 + 0.1 * rng.standard_normal(k)).astype(np.float32)
    gamma[[3, 17, 40, 41]] *= outlier
    w0 = (rng.standard_normal((k, k)) / np.sqrt(k)).astype(np.float32)
    w0[[3, 17, 40, 41]] /= outlier  # the model compensates, so the function stays the same
    inits = {
        "gamma": gamma, "beta": (0.1 * rng.standard_normal(k)).astype(np.float32), "w0": w0,
        "w1": (rng.standard_normal((k, 32)) / np.sqrt(k)).astype(np.float32),
    }
    nodes = [
        oh.make_node("LayerNormalization", ["x", "gamma", "beta"], ["n"], name="norm", axis=-1),
        oh.make_node("MatMul", ["n", "w0"], ["m0"], name="mm0"),
        oh.make_node("Relu", ["m0"], ["h0"], name="relu0"),
        oh.make_node("MatMul", ["h0", "w1"], ["y"], name="mm1"),
    ]
    return _model(nodes, [oh.make_tensor_value_info("x", F, [2, tokens, k])],
                  [oh.make_tensor_value_info("y", F, [2, tokens, 32])], inits)


def conv(seed: int = 0) -> ir.Model:
    rng = np.random.default_rng(seed)
    inits = {"w": rng.standard_normal((6, 3, 3, 3)).astype(np.float32) * 0.3, "b": rng.standard_normal(6).astype(np.float32)}
    nodes = [oh.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    return _model(nodes, [oh.make_tensor_value_info("x", F, [1, 3, 8, 8])],
                  [oh.make_tensor_value_info("y", F, [1, 6, 8, 8])], inits)


def gemm(seed: int = 0) -> ir.Model:
    rng = np.random.default_rng(seed)
    inits = {"w": rng.standard_normal((12, 16)).astype(np.float32) * 0.25, "b": rng.standard_normal(12).astype(np.float32)}
    nodes = [oh.make_node("Gemm", ["x", "w", "b"], ["y"], name="gemm", transB=1)]
    return _model(nodes, [oh.make_tensor_value_info("x", F, [4, 16])],
                  [oh.make_tensor_value_info("y", F, [4, 12])], inits)


def feeds_for(model: ir.Model, seed: int, n: int = 1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        out.append({v.name: rng.standard_normal([int(d) for d in v.shape]).astype(np.float32) for v in model.graph.inputs})
    return out


def run(model: ir.Model, feeds) -> np.ndarray:
    sess = make_session(ir.to_proto(model).SerializeToString())
    return sess.run(None, feeds)[0]


def apply(model: ir.Model, spec: str, calib=None) -> list:
    """Run ``spec`` on ``model`` in place with ``calib`` as the context's calibration set."""
    context = PassContext(calibration=calib)
    return [p(model, context) for p in build_pipeline(spec).passes]


def cosine(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def producer_op(value: ir.Value) -> str | None:
    p = value.producer()
    return p.op_type if p is not None else None
