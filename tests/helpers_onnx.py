"""Small helpers for pass tests: build models from ONNX text, count ops, run ORT."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnx.parser
import onnx.shape_inference
import onnx_ir as ir
import onnxruntime as ort

from genzip.ort_session import make_session, session_options
from genzip.passes.infra.contract import FACTS_KEY


def model_from_text(text: str, infer: bool = True) -> ir.Model:
    """Parse ONNX text; ``infer`` types every value (the attention rules need ranks)."""
    proto = onnx.parser.parse_model(text)
    if infer:
        proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    return ir.from_proto(proto)


def save_static_relu(path) -> str:
    """Write ``y = Relu(x)``, x and y float [1, 4] (every shape fixed), to ``path``; return it as a str."""
    graph = onnx.parser.parse_graph("g (float[1, 4] x) => (float[1, 4] y) { y = Relu(x) }")
    onnx.save(onnx.helper.make_model(graph), str(path))
    return str(path)


def op_counts(model: ir.Model) -> dict[str, int]:
    return dict(collections.Counter(n.op_type for n in ir.traversal.RecursiveGraphIterator(model.graph)))


def proto_bytes(model: ir.Model) -> bytes:
    """The serialized model, minus the facts record passes add even when they change nothing."""
    proto = ir.to_proto(model)
    kept = [p for p in proto.metadata_props if p.key != FACTS_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    return proto.SerializeToString(deterministic=True)


_NP = {ir.DataType.FLOAT: np.float32, ir.DataType.FLOAT16: np.float16, ir.DataType.INT64: np.int64,
       ir.DataType.INT32: np.int32, ir.DataType.BOOL: np.bool_}


def random_feeds(model: ir.Model, seed: int = 0) -> dict[str, np.ndarray]:
    """Feeds for every graph input (static shapes only); integers are drawn from [0, 10)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in model.graph.inputs:
        if value.name in model.graph.initializers:
            continue
        shape = [int(d) for d in value.shape]
        dtype = _NP[value.dtype]
        if np.issubdtype(dtype, np.integer):
            feeds[value.name] = rng.integers(0, 10, size=shape).astype(dtype)
        elif dtype is np.bool_:
            feeds[value.name] = rng.random(shape) > 0.5
        else:
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def run_ort(model: ir.Model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = make_session(ir.to_proto(model).SerializeToString())
    return session.run(None, feeds)


def ort_session(model: ir.Model, threads: int = 1) -> ort.InferenceSession:
    """A CPU session of ``model`` with ``threads`` intra-op threads (one inter-op thread)."""
    options = session_options(threads)
    options.inter_op_num_threads = 1
    return ort.InferenceSession(ir.to_proto(model).SerializeToString(), options, providers=["CPUExecutionProvider"])


def qkv_inputs(batch, heads, seq, dim, kv_heads=None) -> list[ir.Value]:
    """Graph inputs q, k, v (float32) [batch, heads (k, v: kv_heads), seq, dim]; dims may be ints or names."""
    kv_heads = heads if kv_heads is None else kv_heads
    return [ir.Value(name=name, type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([batch, h, seq, dim]))
            for name, h in (("q", heads), ("k", kv_heads), ("v", kv_heads))]


def assert_same_outputs(before: list[np.ndarray], after: list[np.ndarray]) -> None:
    assert len(before) == len(after)
    for b, a in zip(before, after):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def export_torch(module, args: tuple, opset: int = 23, kwargs: dict | None = None) -> ir.Model:
    """``torch.onnx.export(..., dynamo=True)``, quietly; returns the onnx_ir model."""
    import torch

    program = torch.onnx.export(module.eval(), args, kwargs=kwargs, dynamo=True, opset_version=opset, verbose=False)
    return program.model


def drop_noop_squeezes(model: ir.Model) -> int:
    """Replace Squeeze nodes on static non-1 dims by Identity (torch's ``squeeze(1)`` no-op).

    diffusers 0.42's PixArt exports ``Squeeze(axes=[1])`` on a 256-wide dim, which
    ORT refuses to load; torch treats it as a no-op, so Identity is the faithful fix.
    """
    replaced = 0
    for node in list(model.graph):
        if node.op_type != "Squeeze" or len(node.inputs) < 2:
            continue
        data, axes = node.inputs[0], node.inputs[1]
        if data.shape is None or axes.const_value is None:
            continue
        dims = [data.shape[int(a)] for a in axes.const_value.numpy().reshape(-1)]
        if all(isinstance(d, int) and d != 1 for d in dims):
            identity = ir.node("Identity", [data], name=node.name)
            ir.convenience.replace_nodes_and_values(
                model.graph, node, [node], [identity], [node.outputs[0]], [identity.outputs[0]]
            )
            replaced += 1
    return replaced


def tiny_pixart() -> tuple[ir.Model, dict[str, np.ndarray]]:
    """A 2-block PixArt transformer (random weights) exported at opset 23, plus feeds."""
    import torch
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(0)
    model = PixArtTransformer2DModel(
        sample_size=8, num_layers=2, attention_head_dim=8, num_attention_heads=2, in_channels=4,
        out_channels=8, patch_size=2, cross_attention_dim=16, caption_channels=12,
        num_embeds_ada_norm=1000, norm_type="ada_norm_single", use_additional_conditions=False,
    )
    x, enc, t = torch.randn(1, 4, 8, 8), torch.randn(1, 5, 12), torch.tensor([10])
    onnx_model = export_torch(
        model, (x,), kwargs={"encoder_hidden_states": enc, "timestep": t, "return_dict": False}
    )
    drop_noop_squeezes(onnx_model)
    feeds = {"hidden_states": x.numpy(), "encoder_hidden_states": enc.numpy(), "timestep": t.numpy()}
    return onnx_model, feeds
