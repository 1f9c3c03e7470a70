"""canonicalize-attn: every attention ends as one canonical 4D opset-23 Attention node."""

from __future__ import annotations

import math

import onnx_ir as ir
import pytest
import torch
import torch.nn.functional as F
from helpers_onnx import (
    assert_same_outputs,
    export_torch,
    model_from_text,
    op_counts,
    proto_bytes,
    random_feeds,
    run_ort,
    tiny_pixart,
)

from genzip.errors import GenzipError
from genzip.passes import build_pipeline, get_pass_class, model_facts, parse_pipeline, print_pipeline
from genzip.passes.attention.canonicalize_attn import CanonicalizeAttentionPass
from genzip.passes.infra import registry
from genzip.passes.infra.context import PassContext
from genzip.passes.infra.contract import GenzipPass, GenzipPassResult
from genzip.passes.infra.invariants import check_full
from genzip.passes.infra.manager import run_pipeline

CANONICAL = {"is_causal": 0, "softcap": 0.0, "qk_matmul_output_mode": 0}

# (c) post-scaled by Mul, float mask, K^T = Transpose(K, [0,1,3,2]).
DECOMPOSED_4D = """<ir_version: 10, opset_import: ["" : 23]>
g (float[2,4,3,8] q, float[2,4,5,8] k, float[2,4,5,6] v, float[3,5] m) => (float[2,4,3,6] y) {
  kt = Transpose <perm=[0,1,3,2]> (k)
  s = MatMul(q, kt)
  c = Constant <value = float {0.25}> ()
  s2 = Mul(s, c)
  s3 = Add(s2, m)
  p = Softmax <axis=-1> (s3)
  y = MatMul(p, v)
}"""

# (c) rank 3 [B*H, S, D], Div, mask added on the left, axis given as 2, K^T given directly.
DECOMPOSED_3D = """<ir_version: 10, opset_import: ["" : 23]>
g (float[8,3,4] q, float[8,4,5] kt, float[8,5,6] v, float[8,3,5] m) => (float[8,3,6] y) {
  s = MatMul(q, kt)
  c = Constant <value = float {2.0}> ()
  s2 = Div(s, c)
  s3 = Add(m, s2)
  p = Softmax <axis=2> (s3)
  y = MatMul(p, v)
}"""

# (c) self attention (Q, K, V split from one x), Q pre-scaled by Mul(c, q),
# K^T built by a BSHd transpose (a Transpose gets inserted).
DECOMPOSED_PRESCALED = """<ir_version: 10, opset_import: ["" : 23]>
g (float[1,6,48] x) => (float[1,2,6,8] y) <float c = {0.35}, int64[4] shp = {1,6,2,8}> {
  q0, k0, v0 = Split <axis=2, num_outputs=3> (x)
  q1 = Reshape(q0, shp)
  k1 = Reshape(k0, shp)
  v1 = Reshape(v0, shp)
  q = Transpose <perm=[0,2,1,3]> (q1)
  kt = Transpose <perm=[0,2,3,1]> (k1)
  v = Transpose <perm=[0,2,1,3]> (v1)
  qs = Mul(c, q)
  s = MatMul(qs, kt)
  p = Softmax <axis=-1> (s)
  y = MatMul(p, v)
}"""

# (c) below opset 18: the ONNX C converter raises the opset (ReduceMean's axes become an input).
DECOMPOSED_OPSET17 = """<ir_version: 8, opset_import: ["" : 17]>
g (float[2,4,3,8] q, float[2,4,5,8] k, float[2,4,5,6] v, float[2,4,3,6] r) => (float[1,4,3,6] y) {
  kt = Transpose <perm=[0,1,3,2]> (k)
  s = MatMul(q, kt)
  c = Constant <value = float {0.25}> ()
  s2 = Mul(s, c)
  p = Softmax <axis=-1> (s2)
  a = MatMul(p, v)
  b = Add(a, r)
  y = ReduceMean <axes=[0]> (b)
}"""

# (b) 3D Attention with grouped KV heads and Dv != D.
ATTENTION_3D = """<ir_version: 10, opset_import: ["" : 23]>
g (float[2,3,32] q, float[2,5,16] k, float[2,5,12] v, float[3,5] m) => (float[2,3,24] y) {
  y = Attention <q_num_heads=4, kv_num_heads=2> (q, k, v, m)
}"""

# (a) 4D Attention, scale and the other attributes implicit, q == k == v (self).
ATTENTION_4D = """<ir_version: 10, opset_import: ["" : 23]>
g (float[1,2,5,16] x) => (float[1,2,5,16] y) {
  y = Attention (x, x, x)
}"""

NO_ATTENTION = """<ir_version: 10, opset_import: ["" : 23]>
g (float[2,8] x, float[8,4] w) => (float[2,4] y) {
  c = Constant <value = float {2.0}> ()
  h = MatMul(x, w)
  h2 = Mul(h, c)
  y = Softmax <axis=-1> (h2)
}"""


def _attention(model: ir.Model) -> list[ir.Node]:
    return [n for n in model.graph if n.op_type == "Attention"]


def _attrs(node: ir.Node) -> dict:
    return {name: attr.value for name, attr in node.attributes.items()}


def _canonicalize(model: ir.Model):
    """Run the pass, check the invariants, numerics and idempotence; return the first result."""
    feeds = random_feeds(model)
    before = run_ort(model, feeds)
    result = CanonicalizeAttentionPass()(model)
    check_full(model)
    assert_same_outputs(before, run_ort(model, feeds))
    snapshot = proto_bytes(model)
    again = CanonicalizeAttentionPass()(model)
    assert again.modified is False
    assert proto_bytes(model) == snapshot
    return result


def _assert_canonical(node: ir.Node, scale: float) -> None:
    attrs = _attrs(node)
    assert {k: attrs[k] for k in CANONICAL} == CANONICAL
    assert attrs["scale"] == pytest.approx(scale, rel=1e-6)
    assert "q_num_heads" not in attrs and "kv_num_heads" not in attrs
    assert len(node.outputs) == 1 and len(node.inputs[0].shape) == 4


# --- positive cases from ONNX text ---------------------------------------------------


def test_decomposed_4d_with_mask():
    model = model_from_text(DECOMPOSED_4D)
    result = _canonicalize(model)
    assert result.modified
    assert op_counts(model) == {"Attention": 1}
    (node,) = _attention(model)
    assert [v.name for v in node.inputs] == ["q", "k", "v", "m"]
    _assert_canonical(node, 0.25)
    assert node.metadata_props["genzip.attn.kind"] == "cross"
    assert node.metadata_props["genzip.attn.index"] == "0"
    assert result.stats == {"attention_nodes": 1, "from_decomposed": 1, "from_3d": 0, "self": 0, "cross": 1, "masks_expanded": 0}


def test_decomposed_rank3_is_wrapped_in_unsqueeze_squeeze():
    model = model_from_text(DECOMPOSED_3D)
    result = _canonicalize(model)
    counts = op_counts(model)
    assert counts["Attention"] == 1 and counts["Unsqueeze"] == 4 and counts["Squeeze"] == 1
    assert counts["Transpose"] == 1  # inserted: K^T was not a transpose of K
    assert "Softmax" not in counts and "MatMul" not in counts and "Div" not in counts
    _assert_canonical(_attention(model)[0], 0.5)
    assert result.stats["from_decomposed"] == 1


def test_decomposed_prescaled_self_attention():
    model = model_from_text(DECOMPOSED_PRESCALED)
    result = _canonicalize(model)
    counts = op_counts(model)
    assert counts["Attention"] == 1 and "Softmax" not in counts and "MatMul" not in counts and "Mul" not in counts
    (node,) = _attention(model)
    _assert_canonical(node, 0.35)
    assert node.metadata_props["genzip.attn.kind"] == "self"
    assert result.stats["self"] == 1


def test_decomposed_below_opset_18_raises_the_opset():
    model = model_from_text(DECOMPOSED_OPSET17)
    result = _canonicalize(model)
    assert model.opset_imports[""] == 23 and model.ir_version >= 11
    assert op_counts(model)["Attention"] == 1 and "Softmax" not in op_counts(model)
    assert result.stats["from_decomposed"] == 1


def test_3d_attention_becomes_4d():
    model = model_from_text(ATTENTION_3D)
    result = _canonicalize(model)
    assert op_counts(model) == {"Attention": 1, "Reshape": 4, "Transpose": 4, "Constant": 4}
    (node,) = _attention(model)
    _assert_canonical(node, 1 / math.sqrt(8))
    assert list(node.inputs[0].shape) == [2, 4, 3, 8] and list(node.inputs[1].shape) == [2, 2, 5, 8]
    assert node.inputs[3].name == "m"
    assert result.stats["from_3d"] == 1


def test_4d_attention_only_gains_attributes_and_metadata():
    model = model_from_text(ATTENTION_4D)
    result = _canonicalize(model)
    assert result.modified
    assert op_counts(model) == {"Attention": 1}
    (node,) = _attention(model)
    _assert_canonical(node, 0.25)
    assert node.metadata_props["genzip.attn.kind"] == "self"


def test_unused_present_outputs_are_dropped():
    model = model_from_text(ATTENTION_4D.replace("y = Attention (x, x, x)", "y, pk, pv = Attention (x, x, x)"))
    result = _canonicalize(model)
    assert result.modified and result.stats["from_3d"] == 0
    (node,) = _attention(model)
    assert len(node.outputs) == 1 and node.outputs[0].name == "y"
    _assert_canonical(node, 0.25)


def test_scale_stays_absent_only_when_the_head_size_is_unknown():
    model = model_from_text(ATTENTION_4D.replace("float[1,2,5,16] x", "float[1,2,5,D] x").replace(
        "float[1,2,5,16] y", "float[1,2,5,D] y"))
    assert CanonicalizeAttentionPass()(model).modified is True
    (node,) = _attention(model)
    assert "scale" not in node.attributes
    assert {k: _attrs(node)[k] for k in CANONICAL} == CANONICAL
    snapshot = proto_bytes(model)
    assert CanonicalizeAttentionPass()(model).modified is False
    assert proto_bytes(model) == snapshot


def test_decomposed_multi_query_keeps_one_kv_head():
    text = DECOMPOSED_4D.replace("float[2,4,5,8] k", "float[2,1,5,8] k").replace(
        "float[2,4,5,6] v", "float[2,1,5,6] v")
    model = model_from_text(text)
    _canonicalize(model)
    (node,) = _attention(model)
    assert list(node.inputs[1].shape) == [2, 1, 5, 8] and list(node.outputs[0].shape) == [2, 4, 3, 6]


def test_scope_comes_from_the_producers_when_the_node_has_none():
    text = """<ir_version: 10, opset_import: ["" : 23]>
    g (float[1,5,2,8] q, float[1,5,2,8] k, float[1,5,2,8] v) => (float[1,2,5,8] y) {
      qt = Transpose <perm=[0,2,1,3]> (q)
      kt = Transpose <perm=[0,2,1,3]> (k)
      vt = Transpose <perm=[0,2,1,3]> (v)
      y = Attention (qt, kt, vt)
    }"""
    model = model_from_text(text)
    scopes = {"qt": "['', 'blocks.0', 'blocks.0.attn', 'transpose']",
              "kt": "['', 'blocks.0', 'blocks.0.attn', 'transpose_1']"}
    for node in model.graph:
        if node.outputs[0].name in scopes:
            node.metadata_props["pkg.torch.onnx.name_scopes"] = scopes[node.outputs[0].name]
        elif node.op_type == "Transpose":
            node.metadata_props["namespace"] = ": M/blocks.0: B/blocks.0.attn.v: Linear/t: aten.t"
    _canonicalize(model)
    (node,) = _attention(model)
    assert node.metadata_props["genzip.attn.scope"] == "blocks.0.attn"


# --- torch exports -------------------------------------------------------------------


class _Attn(torch.nn.Module):
    def __init__(self, dim: int = 16, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v = (torch.nn.Linear(dim, dim) for _ in range(3))

    def _split(self, x):
        b, s, d = x.shape
        return x.view(b, s, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, x, ctx):
        q, k, v = self._split(self.q(x)), self._split(self.k(ctx)), self._split(self.v(ctx))
        y = F.scaled_dot_product_attention(q, k, v)
        return y.transpose(1, 2).reshape(x.shape)


class _SelfThenCross(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.attn1, self.attn2 = _Attn(), _Attn()

    def forward(self, x, ctx):
        return self.attn2(self.attn1(x, x), ctx)


@pytest.fixture(scope="module")
def torch_pair():
    torch.manual_seed(0)
    return _SelfThenCross(), (torch.randn(1, 8, 16), torch.randn(1, 5, 16))


def test_torch_sdpa_opset23_self_and_cross(torch_pair):
    module, args = torch_pair
    model = export_torch(module, args, opset=23)
    assert op_counts(model)["Attention"] == 2
    result = _canonicalize(model)
    nodes = _attention(model)
    assert [n.metadata_props["genzip.attn.scope"] for n in nodes] == ["attn1", "attn2"]
    assert [n.metadata_props["genzip.attn.kind"] for n in nodes] == ["self", "cross"]
    assert [n.metadata_props["genzip.attn.index"] for n in nodes] == ["0", "1"]
    for node in nodes:
        _assert_canonical(node, 1 / math.sqrt(8))
    assert result.stats == {"attention_nodes": 2, "from_decomposed": 0, "from_3d": 0, "self": 1, "cross": 1, "masks_expanded": 0}


def test_torch_decomposed_opset18(torch_pair):
    # Below opset 23 torch decomposes SDPA: Q and K^T each scaled by sqrt(scale),
    # K^T built as Reshape/Transpose/Reshape.
    module, args = torch_pair
    model = export_torch(module, args, opset=18)
    assert "Attention" not in op_counts(model) and op_counts(model)["Softmax"] == 2
    result = _canonicalize(model)
    counts = op_counts(model)
    assert model.opset_imports[""] == 23
    assert counts["Attention"] == 2 and "Softmax" not in counts
    nodes = _attention(model)
    assert [n.metadata_props["genzip.attn.kind"] for n in nodes] == ["self", "cross"]
    assert [n.metadata_props["genzip.attn.scope"] for n in nodes] == ["attn1", "attn2"]
    for node in nodes:
        _assert_canonical(node, 1 / math.sqrt(8))
    assert result.stats["from_decomposed"] == 2


@pytest.fixture(scope="module")
def pixart():
    return tiny_pixart()


def test_pixart_attn1_self_attn2_cross(pixart):
    model, feeds = pixart
    model = ir.from_proto(ir.to_proto(model))  # private copy: the fixture is shared
    before = run_ort(model, feeds)
    result = CanonicalizeAttentionPass()(model)
    check_full(model)
    assert_same_outputs(before, run_ort(model, feeds))
    assert op_counts(model)["Attention"] == 4 and "Softmax" not in op_counts(model)
    for node in _attention(model):
        scope = node.metadata_props["genzip.attn.scope"]
        expected = {"attn1": "self", "attn2": "cross"}[scope.rsplit(".", 1)[-1]]
        assert node.metadata_props["genzip.attn.kind"] == expected, scope
        _assert_canonical(node, 1 / math.sqrt(8))
    scopes = [n.metadata_props["genzip.attn.scope"] for n in _attention(model)]
    assert scopes == [f"transformer_blocks.{i}.attn{j}" for i in (0, 1) for j in (1, 2)]
    assert result.stats == {"attention_nodes": 4, "from_decomposed": 0, "from_3d": 0, "self": 2, "cross": 2, "masks_expanded": 0}
    snapshot = proto_bytes(model)
    assert CanonicalizeAttentionPass()(model).modified is False
    assert proto_bytes(model) == snapshot


# --- negative cases ------------------------------------------------------------------


def test_no_attention_leaves_the_model_untouched():
    model = model_from_text(NO_ATTENTION)
    snapshot = proto_bytes(model)
    result = CanonicalizeAttentionPass()(model)
    assert result.modified is False
    assert proto_bytes(model) == snapshot
    assert result.stats == {"attention_nodes": 0, "from_decomposed": 0, "from_3d": 0, "self": 0, "cross": 0, "masks_expanded": 0}
    assert "attention-canonical" in model_facts(model)


def test_no_attention_below_opset_23_keeps_its_opset():
    model = model_from_text(NO_ATTENTION.replace('"" : 23', '"" : 17').replace("ir_version: 10", "ir_version: 8"))
    snapshot = proto_bytes(model)
    assert CanonicalizeAttentionPass()(model).modified is False
    assert proto_bytes(model) == snapshot


def test_untyped_decomposed_chain_is_typed_and_rewritten():
    """Exporters other than torch.export leave values untyped: the pass types them itself."""
    model = model_from_text(DECOMPOSED_4D, infer=False)
    result = _canonicalize(model)
    assert result.modified and op_counts(model) == {"Attention": 1}
    _assert_canonical(_attention(model)[0], 0.25)


def test_untyped_softmax_without_attention_is_left_as_it_came():
    text = """<ir_version: 10, opset_import: ["" : 23]>
g (float[2,3,5] s, float[2,5,4] v) => (float[2,3,4] y) {
  p = Softmax <axis=0> (s)
  y = MatMul(p, v)
}"""
    model = model_from_text(text, infer=False)
    snapshot = proto_bytes(model)
    assert CanonicalizeAttentionPass()(model).modified is False
    assert proto_bytes(model) == snapshot


# TorchScript's SDPA (dynamo=False): Q and K^T are each scaled by sqrt(1/sqrt(D)), with D read
# off Q's shape in the graph; the values carry no types, so the pattern sees no constant scale.
TORCHSCRIPT_SCALE = """<ir_version: 8, opset_import: ["" : 17]>
g (float[1,2,7,16] q, float[1,2,7,16] k, float[1,2,7,16] v) => (float[1,2,7,16] y) {
  shape = Shape(q)
  start = Constant <value = int64[1] {-1}> ()
  end = Constant <value = int64[1] {9223372036854775807}> ()
  d = Slice(shape, start, end)
  df = Cast <to = 1> (d)
  sd = Sqrt(df)
  one = Constant <value = float[1] {1.0}> ()
  inv = Div(one, sd)
  invf = Cast <to = 1> (inv)
  half = Sqrt(invf)
  kt = Transpose <perm = [0,1,3,2]> (k)
  qs = Mul(q, half)
  kts = Mul(kt, half)
  s = MatMul(qs, kts)
  p = Softmax <axis = -1> (s)
  y = MatMul(p, v)
}"""


def test_scale_computed_from_shapes_in_the_graph():
    model = model_from_text(TORCHSCRIPT_SCALE, infer=False)
    result = _canonicalize(model)
    assert result.stats["from_decomposed"] == 1 and op_counts(model) == {"Attention": 1}
    (node,) = _attention(model)
    _assert_canonical(node, 0.25)  # 1/sqrt(16), from sqrt(0.25) on Q times sqrt(0.25) on K^T
    assert [v.name for v in node.inputs] == ["q", "k", "v"]


def test_mask_that_broadcasts_the_scores_up_is_not_fused():
    # Q batch 1, mask batch 2: the decomposed output has batch 2, Attention's would have 1.
    text = DECOMPOSED_4D.replace("float[2,4,3,8] q", "float[1,4,3,8] q").replace(
        "float[3,5] m", "float[2,1,3,5] m").replace("float[2,4,5,8] k", "float[1,4,5,8] k").replace(
        "float[2,4,5,6] v", "float[1,4,5,6] v")
    model = model_from_text(text)
    assert CanonicalizeAttentionPass()(model).modified is False
    assert "Attention" not in op_counts(model)


@pytest.mark.parametrize(
    "call, message",
    [
        ("y = Attention <softcap=30.0> (x, x, x)", "softcap"),
        ("y = Attention (x, x, x, , x, x)", "past key/value"),
    ],
)
def test_attention_without_canonical_form_is_refused(call, message):
    text = ATTENTION_4D.replace("y = Attention (x, x, x)", call)
    model = model_from_text(text, infer=False)
    with pytest.raises(GenzipError, match=message):
        CanonicalizeAttentionPass()(model)


# --- facts, pipeline and spec --------------------------------------------------------


class NeedsCanonicalAttention(GenzipPass):
    """Test-only consumer of the fact."""

    name = "needs-canonical-attn"
    requires_facts = frozenset({"attention-canonical"})

    def run(self, model: ir.Model, context: PassContext) -> GenzipPassResult:
        return GenzipPassResult(model, False, {"attention_nodes": len(_attention(model))})


@pytest.fixture
def consumer_registered(monkeypatch):
    monkeypatch.setitem(registry._PASSES, NeedsCanonicalAttention.name, f"{__name__}:NeedsCanonicalAttention")


def test_missing_fact_is_caught_statically(consumer_registered):
    with pytest.raises(GenzipError, match="canonicalize-attn") as err:
        build_pipeline("dce,needs-canonical-attn")
    assert "attention-canonical" in str(err.value)
    build_pipeline("canonicalize-attn,needs-canonical-attn")  # fine once provided


def test_missing_fact_is_caught_on_the_model():
    model = model_from_text(ATTENTION_4D)
    with pytest.raises(ir.passes.PreconditionError, match="attention-canonical"):
        NeedsCanonicalAttention()(model)
    CanonicalizeAttentionPass()(model)
    assert NeedsCanonicalAttention()(model).stats == {"attention_nodes": 1}


def test_runs_in_a_verified_pipeline(consumer_registered):
    model = model_from_text(DECOMPOSED_4D)
    records = run_pipeline(model, build_pipeline("canonicalize-attn,needs-canonical-attn"))
    assert [r.name for r in records] == ["canonicalize-attn", "needs-canonical-attn"]
    assert records[0].modified and records[0].stats["from_decomposed"] == 1
    assert records[1].stats == {"attention_nodes": 1}


def test_spec_round_trip():
    for spec in ("canonicalize-attn", "canonicalize-attn,dce,cse"):
        assert print_pipeline(parse_pipeline(spec)) == spec
        assert str(build_pipeline(spec)) == spec
    assert get_pass_class("canonicalize-attn") is CanonicalizeAttentionPass
    with pytest.raises(GenzipError, match="has no option"):
        build_pipeline("canonicalize-attn{scale=1}")
