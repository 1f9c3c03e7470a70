"""canonicalize-attn's self/cross/causal classification on real architectures (tests/arch_models.py:
tiny configs, random weights, nothing downloaded), and what span-attn / window-attn then replace.

Each architecture is exported once per session, by genzip's frontend (dynamo exporter) and,
where it can, by the TorchScript exporter (``dynamo=False``, opset 18). Known failures are
xfail with the exact reason. Every TorchScript export is also run in ORT before and after
canonicalize-attn, on inputs with a left-padded attention_mask where the model takes one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import numpy as np
import onnx_ir as ir
import pytest
from arch_models import BUILDERS, VOCAB, export_dynamo, export_torchscript
from helpers_onnx import model_from_text

from genzip.errors import GenzipError
from genzip.metadata import ATTN_KIND_KEY, TORCH_NAME_SCOPES_KEY
from genzip.metadata import ATTN_KIND_REASON_KEY as KIND_REASON_KEY
from genzip.passes.attention import _causal_mask as cm
from genzip.passes.attention import _flops as af
from genzip.passes.attention.canonicalize_attn import CanonicalizeAttentionPass
from genzip.passes.attention.share_attn import ShareAttentionOptions, ShareAttentionPass
from genzip.passes.attention.span_attn import SpanAttentionOptions, SpanAttentionPass, causal_mask_kind
from genzip.passes.attention.window_attn import WindowAttentionOptions, WindowAttentionPass
from genzip.passes.cleanup.fold_constants import FoldConstantsPass
from genzip.passes.cleanup.infer_shapes import InferShapesPass


@dataclasses.dataclass(frozen=True)
class Expect:
    self: int
    cross: int = 0
    causal: int = 0  # is_causal, or a mask proven exactly causal
    padded: int = 0  # causal AND attention_mask padding (counted, never replaced)
    replaced: int = 0  # by span-attn (LMs) or window-attn (diffusers)


LM = Expect(self=2, causal=2, replaced=2)
LM1 = Expect(self=1, causal=1, replaced=1)  # one-layer configs
SPAN, WINDOW = "span-attn{alpha=4 beta=0 sinks=1}", "window-attn"

_DIFF = "Exporting the operator 'aten::diff' to ONNX opset version 18 is not supported"

# (architecture, exporter) -> expected counts, or the reason it is xfail.
MATRIX: dict[tuple[str, str], Expect | str] = {
    ("llama", "dynamo"): LM,
    ("llama-padded", "dynamo"): Expect(self=2, padded=2),
    ("qwen2", "dynamo"): LM,
    ("mistral", "dynamo"): LM1,
    ("gemma", "dynamo"): LM1,
    ("phi", "dynamo"): LM1,
    ("gpt2", "dynamo"): LM,
    ("gpt-neox", "dynamo"): LM1,
    ("mixtral", "dynamo"): LM1,
    # T5's decoder self-attention mask carries the relative position bias: not a plain causal mask.
    ("t5", "dynamo"): Expect(self=2, cross=1),
    ("bart", "dynamo"): Expect(self=2, cross=1, causal=1, replaced=1),
    ("pixart", "dynamo"): Expect(self=2, cross=2, replaced=2),
    ("dit", "dynamo"): Expect(self=2, replaced=2),
    # SD3.5-style block: joint attention (one self attention over image + text) and attn2, a self attention.
    ("sd3", "dynamo"): Expect(self=2, replaced=2),
    ("unet", "dynamo"): Expect(self=2, cross=2, replaced=2),
    ("flux", "dynamo"): Expect(self=2, replaced=2),  # one joint block, one single block
    ("llama", "torchscript"): f"transformers' mask code without attention_mask: {_DIFF}",
    ("qwen2", "torchscript"): f"transformers' mask code without attention_mask: {_DIFF}",
    ("gpt2", "torchscript"): f"transformers' mask code without attention_mask: {_DIFF}",
    # Masked SDPA exports as Softmax -> Where(IsNaN) -> MatMul (torch's _safe_softmax); the left
    # padding makes rows 0-2 fully masked, so the ORT check below covers the guard's zero rows.
    ("llama-padded", "torchscript"): Expect(self=2, padded=2),
    ("llama-eager-padded", "torchscript"): Expect(self=2, padded=2),
    ("t5", "torchscript"): Expect(self=2, cross=1),
    ("bart", "torchscript"): Expect(self=2, cross=1, causal=1, replaced=1),
    ("pixart", "torchscript"): Expect(self=2, cross=2, replaced=2),
    ("dit", "torchscript"): Expect(self=2, replaced=2),
    ("sd3", "torchscript"): Expect(self=2, replaced=2),
    ("unet", "torchscript"): Expect(self=2, cross=2, replaced=2),
    ("flux", "torchscript"): "Exporting the operator 'aten::rms_norm' to ONNX opset version 18 is not supported",
}
_FINITE_MASK_PADDED = {"llama-eager-padded"}
DIFFUSERS = {"pixart", "dit", "sd3", "unet", "flux"}

_EXPORTS: dict[tuple[str, str], bytes] = {}


def _export(name: str, exporter: str) -> ir.Model:
    """A fresh copy of the session's one export of ``name``."""
    key = (name, exporter)
    if key not in _EXPORTS:
        if exporter == "dynamo":
            model = export_dynamo(name)
        elif exporter == "torchscript-raw":
            model = export_torchscript(name)
        else:
            # genzip's cleanup first: TorchScript leaves sequence/head dims symbolic until folded.
            model = _export(name, "torchscript-raw")
            for cleanup in (FoldConstantsPass(), InferShapesPass()):
                model = cleanup.run(model, None).model
        _EXPORTS[key] = ir.to_proto(model).SerializeToString()
    import onnx

    return ir.from_proto(onnx.load_from_string(_EXPORTS[key]))


def _counts(model: ir.Model) -> dict[str, int]:
    sites = af.attention_sites(model)
    cache: dict = {}
    kinds = {"self": 0, "cross": 0, "unknown": 0, "causal": 0, "padded": 0}
    for site in sites:
        kinds[site.kind] += 1
        mask = causal_mask_kind(model, site.node, cache)
        if site.node.attributes.get_int("is_causal", 0) or mask == cm.CAUSAL:
            kinds["causal"] += 1
        elif mask == cm.CAUSAL_PADDING:
            kinds["padded"] += 1
    return kinds


def _params():
    for (name, exporter), expect in MATRIX.items():
        marks = [pytest.mark.xfail(reason=expect, strict=True)] if isinstance(expect, str) else []
        yield pytest.param(name, exporter, expect, id=f"{name}-{exporter}", marks=marks)


def _feeds(model: ir.Model) -> dict[str, np.ndarray]:
    """Inputs for a TorchScript export: token ids below the vocabulary, an attention_mask with
    three left-padded positions (so causal rows 0-2 see no key at all), floats from N(0, 1)."""
    rng = np.random.default_rng(0)
    feeds = {}
    for v in model.graph.inputs:
        dims, dtype = [d if isinstance(d, int) else 1 for d in v.shape], v.dtype.numpy()
        if "attention_mask" in v.name:
            feeds[v.name] = np.ones(dims, dtype)
            feeds[v.name][..., :3] = 0
        elif np.issubdtype(dtype, np.integer):
            feeds[v.name] = rng.integers(0, VOCAB, dims).astype(dtype)
        else:
            feeds[v.name] = rng.standard_normal(dims).astype(dtype)
    return feeds


def _run(model: ir.Model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(ir.to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


@pytest.mark.parametrize("name,exporter,expect", list(_params()))
def test_matrix(name, exporter, expect):
    model = _export(name, exporter)
    if exporter == "torchscript":  # the recognized chains compute what the exporter's did, in ORT
        feeds = _feeds(model)
        before = _run(model, feeds)
    result = CanonicalizeAttentionPass().run(model, None)
    if exporter == "torchscript":
        after = _run(model, feeds)
        assert all(np.isfinite(a).all() for a in after)
        # Eager attention masks with finfo.min, not -inf: a query row that sees no key is the mean
        # of V in the exporter's chain and zeros in ORT's Attention. Only padded positions have
        # such rows, and no other position reads them (the same mask hides them as keys).
        keep = np.s_[:, 3:] if name in _FINITE_MASK_PADDED else np.s_[:]
        for a, b in zip(after, before):
            np.testing.assert_allclose(a[keep], b[keep], rtol=1e-4, atol=1e-5)
    counts = _counts(model)
    assert isinstance(expect, Expect), f"{name} ({exporter}) unexpectedly worked: {counts}"
    assert result.stats["self"] == counts["self"] and result.stats["cross"] == counts["cross"]
    want = {"self": expect.self, "cross": expect.cross, "unknown": 0, "causal": expect.causal,
            "padded": expect.padded}
    assert counts == want
    if name in DIFFUSERS:
        replaced = WindowAttentionPass(WindowAttentionOptions()).run(model, None)
    else:
        replaced = SpanAttentionPass(SpanAttentionOptions(alpha=4, beta=0, sinks=1)).run(model, None)
        assert replaced.stats["causal_masks_recognized"] == expect.causal - sum(
            s.node.attributes.get_int("is_causal", 0) for s in af.attention_sites(model)
            if s.node.op_type == "Attention")
    assert replaced.stats["nodes_replaced"] == expect.replaced


@pytest.mark.parametrize("name", ["llama-padded", "bart"])
def test_torchscript_without_cleanup(name):
    """canonicalize-attn alone on the exporter's file: it types and folds the graph itself
    (mask Expand targets, stale initializer dims), finding what the matrix finds after cleanup."""
    model = _export(name, "torchscript-raw")
    feeds = _feeds(model)
    before = _run(model, feeds)
    result = CanonicalizeAttentionPass().run(model, None)
    expect = MATRIX[(name, "torchscript")]
    assert (result.stats["self"], result.stats["cross"]) == (expect.self, expect.cross)
    assert result.modified and _counts(model)["padded"] == expect.padded
    for a, b in zip(_run(model, feeds), before):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_builders_cover_the_matrix():
    assert {name for name, _ in MATRIX} <= set(BUILDERS)


# --- the reproduction: genzip-compile on a saved Qwen2 folder ---------------------

def test_qwen2_folder_span_attn(tmp_path):
    import torch
    import transformers

    from genzip.tools import compile_cli

    config = transformers.Qwen2Config(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    folder = tmp_path / "qwen2"
    transformers.Qwen2ForCausalLM(config).eval().save_pretrained(folder)
    out = tmp_path / "q"
    rc = compile_cli.main([str(folder), "--target", "onnx", "--out", str(out), "--quiet", "--min-cosine", "0",
                           "--passes", "canonicalize-attn,span-attn{alpha=8 beta=0 sinks=2}"])
    assert rc == 0
    with open(os.path.join(out, "genzip.json")) as f:
        stats = {r["pass"].split("{")[0]: r["stats"] for r in json.load(f)["pass_stats"]}
    assert (stats["canonicalize-attn"]["self"], stats["canonicalize-attn"]["cross"]) == (2, 0)
    assert stats["span-attn"]["nodes_replaced"] == 2
    assert stats["span-attn"]["causal_masks_recognized"] == 2


# --- causal mask forms, on small hand-built graphs ---------------------------------------

N = 6
_CONSTS = """two = Constant <value = int64 {2}> ()
  zero = Constant <value = int64 {0}> ()
  one = Constant <value = int64 {1}> ()
  z1 = Constant <value = int64[1] {0}> ()
  o1 = Constant <value = int64[1] {1}> ()
  axes = Constant <value = int64[2] {1, 2}> ()
  fzero = Constant <value = float {0}> ()
  ninf = Constant <value = float {-inf}> ()
  s = Shape(x)
  n = Gather <axis=0> (s, two)"""


def _model(body: str, mask: str = ", m", causal: int = 0, extra_inputs: str = "") -> ir.Model:
    """Self attention over x ``[1, 2, N, 4]`` whose mask ``m`` is computed by ``body``."""
    return model_from_text(f"""<ir_version: 10, opset_import: ["" : 23]>
g (float[1,2,{N},4] x{extra_inputs}) => (float[1,2,{N},4] y) {{
  {_CONSTS}
  {body}
  y = Attention <is_causal={causal}, scale=0.5> (x, x, x{mask})
}}""")


_TRILU = """n1 = Unsqueeze(n, z1)
  nn = Concat <axis=0> (n1, n1)
  full = ConstantOfShape <value = float[1] {-inf}> (nn)
  m = Trilu <upper=1> (full, one)"""
_RANGE_WHERE = """r = Range(zero, n, one)
  rows = Unsqueeze(r, o1)
  cols = Unsqueeze(r, z1)
  keep = LessOrEqual(cols, rows)
  m = Where(keep, fzero, ninf)"""
_BAND = """r = Range(zero, n, one)
  rows = Unsqueeze(r, o1)
  cols = Unsqueeze(r, z1)
  d = Sub(rows, cols)
  near = LessOrEqual(d, two)
  past = GreaterOrEqual(d, zero)
  keep = And(near, past)
  m = Where(keep, fzero, ninf)"""
# transformers' sdpa mask with padding: causal AND attention_mask[b, j], as a bool [B, 1, N, N].
_PADDED = """r = Range(zero, n, one)
  rows = Unsqueeze(r, o1)
  cols = Unsqueeze(r, z1)
  causal = LessOrEqual(cols, rows)
  pad = Cast <to=9> (attention_mask)
  pad4 = Unsqueeze(pad, axes)
  m = And(causal, pad4)"""


@pytest.mark.parametrize("form,body,kind", [
    ("trilu", _TRILU, cm.CAUSAL),
    ("range-where", _RANGE_WHERE, cm.CAUSAL),
    ("band", _BAND, None),
    ("padded", _PADDED, cm.CAUSAL_PADDING),
])
def test_causal_mask_forms(form, body, kind):
    extra = f", int64[1,{N}] attention_mask" if form == "padded" else ""
    model = _model(body, extra_inputs=extra)
    CanonicalizeAttentionPass().run(model, None)
    (site,) = af.attention_sites(model)
    assert site.kind == "self"
    assert causal_mask_kind(model, site.node, {}) == kind
    result = SpanAttentionPass(SpanAttentionOptions(alpha=2, beta=0)).run(model, None)
    assert result.stats["nodes_replaced"] == (1 if kind == cm.CAUSAL else 0)
    assert result.stats["causal_masks_recognized"] == (1 if kind == cm.CAUSAL else 0)
    assert result.stats.get("causal_padding_masks", 0) == (1 if kind == cm.CAUSAL_PADDING else 0)


def test_is_causal_attribute():
    model = _model("", mask="", causal=1)
    CanonicalizeAttentionPass().run(model, None)
    result = SpanAttentionPass(SpanAttentionOptions(alpha=2, beta=0)).run(model, None)
    assert result.stats["nodes_replaced"] == 1


def test_mask_reading_float_input_is_not_causal():
    body = "m = Identity(bias)"
    model = _model(body, extra_inputs=f", float[1,1,{N},{N}] bias")
    CanonicalizeAttentionPass().run(model, None)
    (site,) = af.attention_sites(model)
    assert causal_mask_kind(model, site.node, {}) is None


# --- unknown kind: structure and scope disagree ------------------------------------------

CROSS_GRAPH = """<ir_version: 10, opset_import: ["" : 23]>
g (float[1,2,8,4] x, float[1,2,5,4] c) => (float[1,2,8,4] y) {
  q = Relu(x)
  y = Attention <is_causal=0, scale=0.5> (q, c, c)
}"""


def _disagreeing() -> ir.Model:
    model = model_from_text(CROSS_GRAPH)
    (node,) = [n for n in model.graph if n.op_type == "Attention"]
    node.metadata_props[TORCH_NAME_SCOPES_KEY] = repr(["", "blocks.0", "blocks.0.attn1", "sdpa"])
    CanonicalizeAttentionPass().run(model, None)
    return model


def test_disagreement_is_unknown():
    model = _disagreeing()
    (node,) = [n for n in model.graph if n.op_type == "Attention"]
    assert node.metadata_props[ATTN_KIND_KEY] == "unknown"
    assert "module 'blocks.0.attn1' says self" in node.metadata_props[KIND_REASON_KEY]


def test_agreeing_scope_keeps_kind():
    model = model_from_text(CROSS_GRAPH)
    (node,) = [n for n in model.graph if n.op_type == "Attention"]
    node.metadata_props[TORCH_NAME_SCOPES_KEY] = repr(["", "blocks.0", "blocks.0.attn2", "sdpa"])
    result = CanonicalizeAttentionPass().run(model, None)
    assert node.metadata_props[ATTN_KIND_KEY] == "cross" and result.stats["cross"] == 1
    assert KIND_REASON_KEY not in node.metadata_props and "unknown" not in result.stats


@pytest.mark.parametrize("make", [
    lambda: WindowAttentionPass(WindowAttentionOptions()),
    lambda: SpanAttentionPass(SpanAttentionOptions(alpha=2, beta=0)),
    lambda: ShareAttentionPass(ShareAttentionOptions()),
], ids=["window-attn", "span-attn", "share-attn"])
def test_passes_refuse_unknown(make):
    model = _disagreeing()
    with pytest.raises(GenzipError) as err:
        make().run(model, None)
    text = str(err.value)
    assert "\n" not in text and "attention 0" in text and "blocks.0.attn1" in text and "says self" in text


def test_no_op_warning(caplog):
    model = model_from_text(CROSS_GRAPH)
    CanonicalizeAttentionPass().run(model, None)
    with caplog.at_level(logging.WARNING):
        result = WindowAttentionPass(WindowAttentionOptions()).run(model, None)
    assert result.stats["nodes_replaced"] == 0
    assert "window-attn replaced none of the 1 attention(s): 1 classified cross" in caplog.text


def test_torchscript_names_corroborate():
    """Without exporter metadata, TorchScript's '/blocks.0/self_attn/Op' node names are the scope."""
    model = model_from_text(CROSS_GRAPH)
    (relu,) = [n for n in model.graph if n.op_type == "Relu"]
    relu.name = "/blocks.0/self_attn/Relu"
    CanonicalizeAttentionPass().run(model, None)
    (site,) = af.attention_sites(model)
    assert site.kind == "unknown" and "module 'blocks.0.self_attn' says self" in site.kind_reason
