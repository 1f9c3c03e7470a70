"""Timestep ranges (ViDiT-Q's timestep-wise channel balancing): weights chosen per range.

``smooth{ranges=K}`` splits the calibration timesteps into K ranges of (near) equal
numbers of distinct timesteps and balances each range with its own scales, as
ViDiT-Q's ``timerange`` smoothing does. The graph then selects, once per run, the
range of the batch's first timestep (the reference reads ``t[0]``; a CFG batch has one
timestep)::

    index = ReduceSum(Cast(Greater(timestep[0], points)))      # scalar int64 in [0, K)

Invariant: a *ranged* value is ``Gather(stack, index, axis=0)`` with ``stack`` a
constant ``[K, ...]`` whose slice k is what range k uses, and ``index`` the one value
above; ``quant`` quantizes every slice (per-channel scales per slice) and gathers the
quantized slice and its scales the same way.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from genzip.errors import GenzipError
from genzip.passes.quant._qdq import Builder


def first_timestep(feeds: dict[str, np.ndarray], name: str) -> float:
    return float(np.asarray(feeds[name]).reshape(-1)[0])


def split_points(timesteps: list[float], k: int, where: str) -> np.ndarray:
    """K - 1 ascending thresholds between K groups of the distinct calibration timesteps."""
    distinct = np.unique(np.asarray(timesteps, dtype=np.float64))
    if len(distinct) < k:
        raise GenzipError(
            f"{where}: ranges={k} needs at least {k} distinct timesteps in the calibration data, "
            f"it has {len(distinct)} ({', '.join(f'{t:g}' for t in distinct[:8])})",
            f"use ranges<={len(distinct)} or calibrate on more timesteps")
    groups = np.array_split(distinct, k)
    return np.array([(a[-1] + b[0]) / 2 for a, b in zip(groups, groups[1:])], dtype=np.float32)


def range_of(t: float, points: np.ndarray) -> int:
    """The index the graph computes: how many thresholds ``t`` exceeds."""
    return int(np.sum(np.float32(t) > points))


def index_value(graph: ir.Graph, timestep: ir.Value, points: np.ndarray) -> ir.Value:
    """Build the range index from the timestep input at the head of the graph."""
    b = Builder(graph, "timestep_range")
    flat = b.op("Reshape", timestep, b.initializer("flat", np.array([-1], np.int64)))
    t0 = b.op("Gather", flat, b.initializer("first", np.array(0, np.int64)), axis=0)
    t0 = b.op("Cast", t0, to=ir.DataType.FLOAT)
    above = b.op("Cast", b.op("Greater", t0, b.initializer("points", points)), to=ir.DataType.INT64)
    index = b.op("ReduceSum", above, b.initializer("axes", np.array([0], np.int64)), keepdims=0)
    graph.insert_before(graph.node(0), b.nodes)
    return index


def select(b: Builder, suffix: str, stack: np.ndarray, index: ir.Value) -> ir.Value:
    """``Gather(stack, index)``: slice ``index`` of a new [K, ...] initializer."""
    return b.op("Gather", b.initializer(suffix, np.ascontiguousarray(stack)), index, axis=0)


def ranged(value: ir.Value | None) -> tuple[np.ndarray, ir.Value] | None:
    """(stack, index) when ``value`` is a ranged weight (see the module invariant), else None."""
    node = None if value is None else value.producer()
    if node is None or node.op_type != "Gather" or node.attributes.get_int("axis", 0) != 0:
        return None
    stack = node.inputs[0]
    if stack is None or stack.const_value is None or node.inputs[1].producer() is None:
        return None
    if node.inputs[1].producer().op_type != "ReduceSum":
        return None
    return stack.const_value.numpy(), node.inputs[1]
