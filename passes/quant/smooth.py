"""``smooth{alpha=... rotate=none|hadamard|random}``: balance activation outliers into weights.

SmoothQuant / ViDiT-Q channel balancing for every tensor read by annotated,
activation-quantized MatMul/Gemm nodes. Per input channel j, with a_j = max|X_j|
over the calibration set and w_j = max|W_j,:| over every GEMM reading X::

    s_j = a_j^alpha / w_j^(1 - alpha)        X' = X / s      W' = diag(s) W

so X W is unchanged while X' has flat channel ranges. 1/s is migrated into the
producer of X when that is exact: a LayerNormalization with constant scale/bias
(scale and bias / s) or a GEMM (MatMul with constant weight, optionally + constant
bias: its columns / s), provided X has no other reader; otherwise an explicit
``Mul(X, 1/s)`` is inserted in front of the group. ``rotate=hadamard`` then rotates
by an orthonormal Hadamard matrix H of order K (Sylvester times a Paley core, so
384, 1152 and 4608 rotate too; see ``_rotation``): offline ``W'' = H^T W'``, online
``X'' = X' H``, spreading the remaining outliers over all channels. H = A ⊗ B is
applied as ``A^T · X' · B`` on X' viewed as [..., m, p] (fp32 MatMuls left
unannotated). A width with no built-in Hadamard matrix is refused before anything
changes; ``rotate=random`` uses a seeded random orthogonal A ⊗ B instead, at any width.

``ranges=K`` (K > 1, ViDiT-Q's timestep-wise balancing) computes a_j per range of the
``timestep`` input's calibration values (``_ranges``): X' = X * Gather(1/S, index) and
W' = Gather(stack of diag(s_k) W, index), so ``quant`` gives each range its own
quantized weight (K copies: K times the weight bytes). Needs per-channel weights
(w8a8, w8a8-dynamic, w4a8-dynamic) and no ``bos``; nothing migrates into producers.

Invariant: with quantization off the model computes the same function (up to float
rounding); annotations stay valid. Run it after ``annotate-precision`` and before
``calibrate`` (it changes the activations calibrate measures). Calibration data
comes from the same place as ``calibrate``'s (``quant_calib_data``).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import onnx_ir as ir

from genzip.errors import GenzipError
from genzip.passes.infra.context import PassContext, calibration_need
from genzip.passes.infra.contract import GenzipPass, GenzipPassResult
from genzip.passes.quant import _calib_data as data_mod
from genzip.passes.quant import _ranges, _rotation
from genzip.passes.quant._qdq import Builder, drop_if_unused
from genzip.passes.quant._spec import annotated_nodes, spec_of

S_RANGE = (1e-4, 1e4)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Options:
    alpha: float = 0.5
    rotate: Literal["none", "hadamard", "random"] = "none"
    samples: int = 0
    data: str | None = None
    ranges: int = 1
    timestep: str = "timestep"

    def __post_init__(self):
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha={self.alpha} must be in [0, 1]")
        if not 1 <= self.ranges <= 64:
            raise ValueError(f"ranges={self.ranges} must be in [1, 64]")


def hadamard(k: int) -> np.ndarray | None:
    """Orthonormal Hadamard matrix of order k, or None when none is built in (see ``_rotation``)."""
    factors = _rotation.hadamard_factors(k)
    return None if factors is None else _rotation.full(factors)


def _rotations(opts: Options, groups: dict[str, list[ir.Node]], seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each group's rotation factors; refuses (before any change) a width hadamard cannot rotate."""
    if opts.rotate == "none":
        return {}
    out = {}
    for name, nodes in groups.items():
        k = _weight_kn(nodes[0]).shape[0]
        if opts.rotate == "random":
            out[name] = _rotation.random_factors(k, seed)
            continue
        factors = _rotation.hadamard_factors(k)
        if factors is None:
            raise GenzipError(
                f"smooth{{rotate=hadamard}}: no Hadamard matrix of order {k} is built in (input '{name}'; "
                f"widths 2^j times 1, a Paley order q+1 or 2(q+1) for a prime q, up to {_rotation.MAX_CORE})",
                "use rotate=random (a seeded random orthogonal rotation) or rotate=none")
        out[name] = factors
    return out


def _rotate(graph: ir.Graph, first: ir.Node, x: ir.Value, factors: tuple[np.ndarray, np.ndarray]) -> ir.Value:
    """Insert ``x (A ⊗ B)`` before ``first``: one MatMul when A is 1×1, else A^T · x[..., m, p] · B."""
    a, b_mat = factors
    b = Builder(graph, f"{first.name}.rotate")
    if a.shape[0] == 1:
        y = b.op("MatMul", x, b.initializer("rotation", b_mat))
    else:
        mp = b.initializer("rotation_mp", np.array([a.shape[0], b_mat.shape[0]], dtype=np.int64))
        split = b.op("Concat", b.op("Shape", x, end=-1), mp, axis=0)
        t = b.op("MatMul", b.op("Reshape", x, split), b.initializer("rotation_b", b_mat))
        t = b.op("MatMul", b.initializer("rotation_at", np.ascontiguousarray(a.T)), t)
        y = b.op("Reshape", t, b.op("Shape", x))
    graph.insert_before(first, b.nodes)
    return y


def _groups(model: ir.Model) -> dict[str, list[ir.Node]]:
    out: dict[str, list[ir.Node]] = {}
    for node, spec in annotated_nodes(model):
        if spec.keep is None and spec.activation is not None and node.op_type in ("MatMul", "Gemm"):
            out.setdefault(node.inputs[0].name, []).append(node)
    return out


def _channel_amax(model: ir.Model, names: list[str], samples, range_ids: list[int]) -> list[dict[str, np.ndarray]]:
    """Per range (``range_ids[i]`` is sample i's), each tensor's max |x| per last-axis channel."""
    session = data_mod.probe_session(model, names)  # by path when large: never one protobuf
    out_names = [o.name for o in session.get_outputs()]
    amax: list[dict[str, np.ndarray]] = [{} for _ in range(max(range_ids) + 1)]
    for feeds, r in zip(samples, range_ids):
        got = dict(zip(out_names, session.run(None, feeds)))
        for n in names:
            x = feeds[n] if n in feeds else got[n]
            m = np.abs(x.reshape(-1, x.shape[-1])).max(axis=0)
            amax[r][n] = np.maximum(amax[r][n], m) if n in amax[r] else m
    return amax


def _weight_kn(node: ir.Node) -> np.ndarray:
    w = node.inputs[1].const_value.numpy()
    return w.T if node.op_type == "Gemm" and node.attributes.get_int("transB", 0) else w


def _set_weight(graph: ir.Graph, node: ir.Node, w_kn: np.ndarray, index: int = 1) -> None:
    """Give ``node`` a private initializer holding the new weight (the old may be shared)."""
    if node.op_type == "Gemm" and node.attributes.get_int("transB", 0):
        w_kn = w_kn.T
    b = Builder(graph, node.name or "smooth")
    old = node.inputs[index]
    node.replace_input_with(index, b.initializer("smoothed", np.ascontiguousarray(w_kn, dtype=np.float32)))
    drop_if_unused(graph, old)


def _scales(a: np.ndarray, w_amax: np.ndarray, alpha: float) -> np.ndarray:
    a = a.astype(np.float64)
    s = np.where((a > 0) & (w_amax > 0), a**alpha / np.maximum(w_amax, 1e-12) ** (1 - alpha), 1.0)
    return np.clip(s, *S_RANGE).astype(np.float32)


def _set_ranged_weight(graph: ir.Graph, node: ir.Node, stack_kn: np.ndarray, index: ir.Value) -> None:
    """Weight input = Gather(stack, index) ([ranges, K, N]; Gemm transB keeps its [N, K] slices)."""
    if node.op_type == "Gemm" and node.attributes.get_int("transB", 0):
        stack_kn = stack_kn.transpose(0, 2, 1)
    b = Builder(graph, node.name or "smooth")
    old = node.inputs[1]
    node.replace_input_with(1, _ranges.select(b, "smoothed_ranges", stack_kn.astype(np.float32), index))
    graph.insert_before(node, b.nodes)
    drop_if_unused(graph, old)


def _check_ranged(model: ir.Model, opts: Options, groups: dict[str, list[ir.Node]]) -> None:
    """ranges=K needs the timestep input and per-channel weights without bos (refused before any change)."""
    names = [v.name for v in model.graph.inputs]
    if opts.timestep not in names:
        raise GenzipError(f"smooth{{ranges={opts.ranges}}}: the model has no input '{opts.timestep}' (inputs: "
                          f"{', '.join(names)})", "name the timestep input with timestep=NAME, or use ranges=1")
    for nodes in groups.values():
        for n in nodes:
            spec = spec_of(n)
            if spec.weight.granularity != "per-channel" or spec.weight.dtype not in ("int8", "int4") or spec.bos:
                raise GenzipError(
                    f"smooth{{ranges={opts.ranges}}}: {n.name or spec.module} is annotated {spec.scheme} "
                    f"({spec.weight.granularity} {spec.weight.dtype} weights{', bos' if spec.bos else ''}); "
                    "timestep ranges select per-channel int8/int4 weights only",
                    "annotate with w8a8, w8a8-dynamic or w4a8-dynamic (without bos), or use ranges=1")


def _migrate(graph: ir.Graph, x: ir.Value, inv: np.ndarray) -> str | None:
    """Fold ``x * inv`` (per last-axis channel) into x's producer; return how, or None."""
    producer = x.producer()
    if producer is None or x in graph.outputs:
        return None
    b = Builder(graph, producer.name or "smooth")
    consts = [v is not None and v.const_value is not None for v in producer.inputs]
    if producer.op_type == "LayerNormalization" and producer.attributes.get_int("axis", -1) == -1 and all(consts[1:]):
        for i in range(1, len(producer.inputs)):
            old = producer.inputs[i]
            if old is not None:
                producer.replace_input_with(i, b.initializer("smoothed", old.const_value.numpy() * inv))
                drop_if_unused(graph, old)
        return "layernorm"
    gemm, bias = producer, None
    if producer.op_type == "Add" and consts[1] and producer.inputs[0].producer() is not None:
        gemm, bias = producer.inputs[0].producer(), producer.inputs[1]
        if len(producer.inputs[0].uses()) != 1 or bias.const_value.numpy().shape[-1:] != inv.shape:
            return None
    if gemm.op_type != "MatMul" or gemm.inputs[1] is None or gemm.inputs[1].const_value is None:
        return None
    if gemm.inputs[1].const_value.numpy().ndim != 2:
        return None
    old = gemm.inputs[1]
    gemm.replace_input_with(1, b.initializer("smoothed", old.const_value.numpy() * inv[None, :]))
    drop_if_unused(graph, old)
    if bias is not None:
        producer.replace_input_with(1, b.initializer("smoothed_bias", bias.const_value.numpy() * inv))
        drop_if_unused(graph, bias)
    return "gemm"


class SmoothPass(GenzipPass):
    name = "smooth"
    summary = "SmoothQuant channel balancing (+ optional Hadamard rotation) for annotated GEMM inputs"
    Options = Options
    requires_facts = frozenset({"quant-annotated"})
    invalidates_facts = frozenset({"quant-calibrated"})
    transforming = True

    def needs(self) -> frozenset[str]:
        return calibration_need(self.options.data)

    def run(self, model: ir.Model, context: PassContext) -> GenzipPassResult:
        opts: Options = self.options
        graph = model.graph
        groups = _groups(model)
        if not groups:
            annotated = annotated_nodes(model)
            why = (f"no annotated MatMul/Gemm with a static activation to balance ({len(annotated)} annotated "
                   f"layer(s), {sum(1 for _, sp in annotated if sp.keep is not None)} kept)")
            return GenzipPassResult(model, False, {"smoothed": 0}, noop_reason=why)
        samples = data_mod.resolve(opts.data, context, self.name)
        samples = samples[: opts.samples] if opts.samples else samples
        data_mod.check_feeds(model, samples)
        rotations = _rotations(opts, groups, context.seed)
        points, range_ids, index = None, [0] * len(samples), None
        if opts.ranges > 1:
            _check_ranged(model, opts, groups)
            timesteps = [_ranges.first_timestep(f, opts.timestep) for f in samples]
            points = _ranges.split_points(timesteps, opts.ranges, self.name)
            range_ids = [_ranges.range_of(t, points) for t in timesteps]
        act = _channel_amax(model, sorted(groups), samples, range_ids)
        if points is not None:
            index = _ranges.index_value(graph, next(v for v in graph.inputs if v.name == opts.timestep), points)
        counts = {"smoothed": 0, "layernorm": 0, "gemm": 0, "mul": 0, "rotated": 0, "ranges": opts.ranges}
        for name, nodes in groups.items():
            x = nodes[0].inputs[0]
            weights = [_weight_kn(n) for n in nodes]
            w_amax = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
            s = np.stack([_scales(a[name], w_amax, opts.alpha) for a in act])  # [ranges, channels]
            readers = {id(u.node) for u in x.uses()}
            how = None
            if index is None and readers == {id(n) for n in nodes}:
                how = _migrate(graph, x, 1.0 / s[0])
            if how is None:
                b = Builder(graph, f"{nodes[0].name}.smooth")
                inv = (1.0 / s).astype(np.float32)
                scale = b.initializer("inv_s", inv[0]) if index is None else _ranges.select(b, "inv_s", inv, index)
                x_new = b.op("Mul", x, scale)
                graph.insert_before(nodes[0], b.nodes)
                for n in nodes:
                    n.replace_input_with(0, x_new)
                how, x = "mul", x_new
            counts[how] += 1
            factors = rotations.get(name)
            if factors is not None:
                x_rot = _rotate(graph, nodes[0], x, factors)
                for n in nodes:
                    n.replace_input_with(0, x_rot)
                counts["rotated"] += 1
            for n, w in zip(nodes, weights):
                balanced = [sk[:, None] * w for sk in s]
                if factors is not None:
                    balanced = [_rotation.rotate_weight(factors, wk) for wk in balanced]
                if index is None:
                    _set_weight(graph, n, balanced[0])
                else:
                    _set_ranged_weight(graph, n, np.stack(balanced), index)
            counts["smoothed"] += 1
        return GenzipPassResult(model, True, counts)
