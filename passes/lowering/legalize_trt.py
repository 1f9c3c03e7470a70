"""``legalize-trt{trt-version=...}``: after it, every ONNX ``Attention`` node the
targeted TensorRT ONNX parser cannot import is gone, replaced by the primitive chain

    MatMul(Q, Transpose(K)) -> Mul(scale) [-> softcap] [-> Add(mask)] [-> Add(causal)]
    -> Softmax -> MatMul(V)

that TensorRT's builder fuses back into its fused multi-head-attention kernels.

Which nodes go is decided by ``backends.trt_lint.attention_problems`` (the rule the
lint reports), so ``genzip lint --target trt --trt-version V`` finds no Attention
problem after ``legalize-trt{trt-version=V}``:

* parsers before 10.14 have no Attention importer: every Attention is decomposed;
* 10.14+ import 4D Attention without KV cache, softcap or extra outputs: only nodes
  outside that are decomposed, and a mask of rank < 4 (the one fixable problem)
  just gets an ``Unsqueeze`` to 4D, keeping the native node.

Any opset-23/24 Attention is handled: 3D inputs (heads from ``q_num_heads``/
``kv_num_heads``), boolean or additive masks, ``is_causal`` (offset by the past
length when a KV cache is given, as the ONNX spec says), ``past_key``/``past_value``
(``present_*`` outputs become the concatenations), grouped-query attention (each K/V
head repeated ``Hq/Hkv`` times, interleaved like the spec, via Unsqueeze/Expand/
Reshape), ``softcap`` and ``softmax_precision``. Nodes that use
``qk_matmul_output``, ``nonpad_kv_seqlen`` or the opset-25 window attributes, or
whose ranks or head counts are unknown, are left in place and counted in ``kept``.

Invariant: outside fully masked rows the rewritten graph computes what the ONNX
reference does for the replaced node (up to float rounding: ``scale`` multiplies
the QK product instead of sqrt(scale) both factors). A row whose keys are all
masked gives NaN here where opset 24 specifies zeros; TensorRT's fused kernels do
not define it either. ``genzip.*`` plugin nodes and their function bodies are not
touched: the parser-prepared copy maps those to plugins (see ``backends.trt_build``).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx_ir as ir

from genzip.ir_build import NodeBuilder
from genzip.passes.infra.context import PassContext
from genzip.passes.infra.contract import GenzipPass, GenzipPassResult
from genzip.passes.lowering import _trt_support as trt_support
from genzip.passes.lowering._trt_rules import MASK_NOT_4D, attention_problems, attn_graphs, int_attr

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LegalizeTrtOptions:
    trt_version: str = trt_support.DEFAULT_TRT_VERSION

    def __post_init__(self):
        trt_support.parse_version(self.trt_version)


class _Builder(NodeBuilder):
    """Every node ``<prefix>_<Op>_<n>`` and its one output ``<prefix>_<n>``."""

    def __init__(self, prefix: str, like: ir.Value):
        super().__init__(prefix)
        self.like = like

    def _output_names(self, op_type: str, n: int) -> list[str | None]:
        return [f"{self.prefix}_{self._count}"] + [None] * (n - 1)

    def _node_name(self, op_type: str) -> str:
        return f"{self.prefix}_{op_type}_{self._next()}"

    def floats(self, array) -> ir.Value:
        """A constant of Q's dtype (CastLike when Q's dtype is unknown, as in function bodies)."""
        dtype = self.like.dtype
        if dtype is not None and dtype.is_floating_point():
            return self.op("Constant", value=ir.tensor(np.asarray(array, dtype=dtype.numpy())))
        return self.op("CastLike", self.op("Constant", value=ir.tensor(np.asarray(array, np.float32))), self.like)


def _shape(value: ir.Value | None):
    return None if value is None or value.shape is None else list(value.shape)


def _heads(node: ir.Node, index: int, attr: str) -> int | str | None:
    """Head count of input ``index``: an int, a symbolic dim name, or None when unknown."""
    if int_attr(node, attr, 0) > 0:
        return int_attr(node, attr, 0)
    shape = _shape(node.inputs[index])
    if shape is None or len(shape) != 4:
        return None
    dim = shape[1]
    return dim if isinstance(dim, int) else (dim.value or None)


def _unsupported(node: ir.Node) -> str | None:
    """Why ``node`` cannot be decomposed here, or None."""
    if len(node.outputs) > 3 and _live(node.outputs[3]):
        return "its qk_matmul_output is used"
    if len(node.inputs) > 6 and node.inputs[6] is not None:
        return "it takes nonpad_kv_seqlen"
    if int_attr(node, "left_window_size", -1) >= 0 or int_attr(node, "right_window_size", -1) >= 0:
        return "it uses the opset-25 window attributes"
    if any(_shape(node.inputs[i]) is None for i in range(3)):
        return "the rank of Q, K or V is unknown (run infer-shapes first)"
    hq, hkv = _heads(node, 0, "q_num_heads"), _heads(node, 1, "kv_num_heads")
    if hq is None or hkv is None or (hq != hkv and not (isinstance(hq, int) and isinstance(hkv, int))):
        return "its head counts are unknown"
    if isinstance(hq, int) and hq % hkv:
        return f"{hq} query heads are not a multiple of {hkv} key/value heads"
    return None


def _live(value: ir.Value) -> bool:
    return bool(value.uses()) or value.is_graph_output()


def _split_heads(b: _Builder, x: ir.Value, heads: int) -> ir.Value:
    return b.op("Transpose", b.op("Reshape", x, b.ints(0, 0, heads, -1)), perm=[0, 2, 1, 3])


def _repeat_heads(b: _Builder, x: ir.Value, reps: int, heads_q: int) -> ir.Value:
    """[B, Hkv, S, D] -> [B, Hkv*reps, S, D] with head h of the result = input head h // reps."""
    x5 = b.op("Unsqueeze", x, b.ints(2))
    shape5 = b.op("Concat", b.op("Shape", x, end=2), b.ints(reps), b.op("Shape", x, start=2), axis=0)
    shape4 = b.op("Concat", b.op("Shape", x, end=1), b.ints(heads_q), b.op("Shape", x, start=2), axis=0)
    return b.op("Reshape", b.op("Expand", x5, shape5), shape4)


def _causal_bias(b: _Builder, q: ir.Value, k: ir.Value, offset: ir.Value | None, sq, skv) -> ir.Value:
    """0 where key j <= query i + offset, -inf elsewhere; [Sq, Skv] (static when sq/skv are ints)."""
    if offset is None and isinstance(sq, int) and isinstance(skv, int):
        return b.floats(np.triu(np.full((sq, skv), -np.inf, dtype=np.float32), k=1))
    zero = b.op("Constant", value=ir.tensor(np.array(0, dtype=np.int64)))  # Range takes scalars
    one = b.op("Constant", value=ir.tensor(np.array(1, dtype=np.int64)))
    rows = b.op("Range", zero, b.op("Squeeze", b.op("Shape", q, start=2, end=3)), one)
    if offset is not None:
        rows = b.op("Add", rows, offset)
    cols = b.op("Range", zero, b.op("Squeeze", b.op("Shape", k, start=2, end=3)), one)
    allowed = b.op("LessOrEqual", cols, b.op("Unsqueeze", rows, b.ints(1)))
    return b.op("Where", allowed, b.floats(0.0), b.floats(-np.inf))


def _mask_bias(b: _Builder, mask: ir.Value, k: ir.Value, pad: bool) -> ir.Value:
    bias = mask
    if mask.dtype == ir.DataType.BOOL:
        bias = b.op("Where", mask, b.floats(0.0), b.floats(-np.inf))
    if pad:
        # The spec pads a mask shorter than the keys (past + new) with -inf.
        rank = len(_shape(mask))
        missing = b.op("Sub", b.op("Shape", k, start=2, end=3), b.op("Shape", mask, start=-1))
        pads = b.op("Concat", b.ints(*([0] * (2 * rank - 1))), missing, axis=0)
        bias = b.op("Pad", bias, pads, b.floats(-np.inf), mode="constant")
    return bias


def decompose(node: ir.Node) -> tuple[list[ir.Node], list[ir.Value]]:
    """New nodes and the values replacing ``node.outputs`` (Y, present_key, present_value)."""
    q, k, v = node.inputs[:3]
    mask = node.inputs[3] if len(node.inputs) > 3 else None
    past_k = node.inputs[4] if len(node.inputs) > 4 else None
    past_v = node.inputs[5] if len(node.inputs) > 5 else None
    b = _Builder(f"{node.name or 'attention'}_trt", q)
    three_d = len(_shape(q)) == 3
    hq, hkv = _heads(node, 0, "q_num_heads"), _heads(node, 1, "kv_num_heads")
    # Static sequence lengths, read before Q/K/V are replaced by untyped new values.
    sq, skv = _shape(q)[1 if three_d else 2], _shape(k)[1 if three_d else 2]
    dtype = q.dtype
    if three_d:
        q, k, v = _split_heads(b, q, hq), _split_heads(b, k, hkv), _split_heads(b, v, hkv)
    offset = None
    if past_k is not None:
        offset = b.op("Shape", past_k, start=2, end=3)
        k, v = b.op("Concat", past_k, k, axis=2), b.op("Concat", past_v, v, axis=2)
        skv = None
    present_k = present_v = None
    if len(node.outputs) > 1 and any(_live(o) for o in node.outputs[1:3]):
        # Identity so a used present output never renames an input value.
        present_k, present_v = (k, v) if past_k is not None else (b.op("Identity", k), b.op("Identity", v))
    if hq != hkv:
        k, v = _repeat_heads(b, k, hq // hkv, hq), _repeat_heads(b, v, hq // hkv, hq)
    scores = b.op("MatMul", q, b.op("Transpose", k, perm=[0, 1, 3, 2]))
    scale_attr = node.attributes.get("scale")
    last = _shape(node.inputs[0])[-1]
    head_dim = (last // hq if isinstance(last, int) else None) if three_d else last
    if scale_attr is not None:
        scale = b.floats(scale_attr.as_float())
    elif isinstance(head_dim, int):
        scale = b.floats(1.0 / np.sqrt(head_dim))
    else:
        scale = b.op("Reciprocal", b.op("Sqrt", b.op("CastLike", b.op("Shape", q, start=-1), q)))
    scores = b.op("Mul", scores, scale)
    softcap = node.attributes.get("softcap")
    if softcap is not None and softcap.as_float() > 0:
        cap = b.floats(softcap.as_float())
        scores = b.op("Mul", b.op("Tanh", b.op("Div", scores, cap)), cap)
    if mask is not None:
        mask_len = (_shape(mask) or [None])[-1]
        static_short = isinstance(mask_len, int) and isinstance(skv, int) and mask_len < skv
        pad = _shape(mask) is not None and (past_k is not None or static_short)
        scores = b.op("Add", scores, _mask_bias(b, mask, k, pad))
    if int_attr(node, "is_causal", 0):
        scores = b.op("Add", scores, _causal_bias(b, q, k, offset, sq, skv))
    precision = int_attr(node, "softmax_precision", 0)
    cast_back = precision and dtype is not None and precision != dtype.value
    if cast_back:
        scores = b.op("Cast", scores, to=precision)
    probs = b.op("Softmax", scores, axis=-1)
    if cast_back:
        probs = b.op("Cast", probs, to=dtype.value)
    y = b.op("MatMul", probs, v)
    if three_d:
        y = b.op("Reshape", b.op("Transpose", y, perm=[0, 2, 1, 3]), b.ints(0, 0, -1))
    return b.nodes, [y, present_k, present_v][: len(node.outputs)]


def _add_mask_dims(graph, node: ir.Node) -> None:
    """Unsqueeze a rank < 4 mask to 4D (numpy broadcasting: leading ones)."""
    mask = node.inputs[3]
    b = _Builder(f"{node.name or 'attention'}_trt_mask", node.inputs[0])
    node.replace_input_with(3, b.op("Unsqueeze", mask, b.ints(*range(4 - len(mask.shape)))))
    graph.insert_before(node, b.nodes)


class LegalizeTrtPass(GenzipPass):
    name = "legalize-trt"
    summary = "decompose ONNX Attention the targeted TensorRT ONNX parser cannot import"
    Options = LegalizeTrtOptions
    # Decomposed attention is no longer one canonical Attention node.
    invalidates_facts = frozenset({"attention-canonical"})

    def run(self, model: ir.Model, context: PassContext) -> GenzipPassResult:
        version = trt_support.parse_version(self.options.trt_version)
        stats = {"trt_version": trt_support.version_str(version), "decomposed": 0, "masks_unsqueezed": 0, "kept": 0}
        for graph in attn_graphs(model, version):
            for node in [n for n in graph if n.op_type == "Attention" and n.domain in ("", "ai.onnx")]:
                problems = attention_problems(node, version)
                if not problems:
                    continue
                if problems == [MASK_NOT_4D]:
                    _add_mask_dims(graph, node)
                    stats["masks_unsqueezed"] += 1
                    continue
                why = _unsupported(node)
                if why:
                    logger.warning("legalize-trt: keeping Attention '%s' because %s", node.name, why)
                    stats["kept"] += 1
                    continue
                new_nodes, new_values = decompose(node)
                # Only live outputs are rewired; a dead present_* keeps no name to pass on.
                live = [(old, new) for old, new in zip(node.outputs, new_values) if _live(old)]
                ir.convenience.replace_nodes_and_values(
                    graph, node, [node], new_nodes, [o for o, _ in live], [n for _, n in live])
                stats["decomposed"] += 1
        modified = stats["decomposed"] + stats["masks_unsqueezed"] > 0
        return GenzipPassResult(model, modified, stats)
