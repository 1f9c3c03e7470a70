"""A transforming pass that was asked for and changes nothing fails (exit 2) saying why,
unless given allow-noop=true; orders that cannot work are refused when the spec is parsed."""

from __future__ import annotations

import os

import numpy as np
import onnx_ir as ir
import pytest
from helpers_onnx import model_from_text

from genzip.errors import GenzipError
from genzip.passes import build_pipeline, run_pipeline
from genzip.passes.infra.context import PassContext
from genzip.passes.infra.contract import NoOpError
from genzip.tools import compile_cli

CANONICAL = frozenset({"attention-canonical"})

# No attention at all, one constant-weight MatMul.
MLP = """
<ir_version: 9, opset_import: ["" : 23]>
g (float[2, 8] x) => (float[2, 4] y) <float[8, 4] w = {1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,
    17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32}> {
    h = MatMul (x, w)
    y = Relu (h)
}
"""
RELU = """
<ir_version: 9, opset_import: ["" : 23]>
g (float[2, 8] x) => (float[2, 8] y) {
    y = Relu (x)
}
"""


def test_window_then_share_is_refused_when_the_spec_is_parsed():
    with pytest.raises(GenzipError) as err:
        build_pipeline("canonicalize-attn,window-attn{window=0.25},share-attn{window=0.25}")
    text = str(err.value)
    assert "'share-attn' cannot run after" in text and "attention-windowed" in text
    assert "use share-attn's own window modes" in text and "\n" not in text


def test_refused_order_exits_2_before_loading(tmp_path, capsys):
    rc = compile_cli.main(["tiny-pixart", "--target", "onnx", "--out", str(tmp_path / "a"), "--quiet",
                           "--passes", "canonicalize-attn,window-attn,share-attn"])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot run after" in err and "loading" not in err


def test_allow_noop_is_accepted_by_every_pass_and_round_trips():
    spec = "dce{allow-noop=true},canonicalize-attn{allow-noop=false},window-attn{window=0.25 allow-noop=true}"
    pipeline = build_pipeline(spec)
    assert str(pipeline) == spec
    assert [p.allow_noop for p in pipeline.passes] == [True, False, True]
    with pytest.raises(GenzipError, match="allow-noop.*not a boolean"):
        build_pipeline("dce{allow-noop=maybe}")


def test_canonicalize_attn_finding_nothing_fails_only_when_later_passes_need_attention():
    model = model_from_text(MLP)
    (record,) = run_pipeline(model, build_pipeline("canonicalize-attn"))  # nothing asks for attention
    assert record.stats["attention_nodes"] == 0
    with pytest.raises(NoOpError) as err:
        run_pipeline(model_from_text(MLP), build_pipeline("canonicalize-attn,window-attn"))
    text = str(err.value)
    assert "canonicalize-attn' was asked for but changed nothing: found no attention" in text
    assert "window-attn after it need(s) attention" in text and "allow-noop=true" in text


def test_window_attn_without_attention_fails_and_allow_noop_accepts_it():
    with pytest.raises(NoOpError, match="window-attn' .*found no self-attention: the model has no attention"):
        run_pipeline(model_from_text(MLP), build_pipeline("window-attn", initial_facts=CANONICAL))
    (record,) = run_pipeline(model_from_text(MLP), build_pipeline("window-attn{allow-noop=true}",
                                                                  initial_facts=CANONICAL))
    assert record.modified is False


def test_share_attn_after_window_attn_says_why(pixart_ort):
    """The issue's case on a saved model (the parse-time check cannot see the earlier compile)."""
    model = ir.load(os.path.join(pixart_ort[0], "model.onnx"))
    (record,) = run_pipeline(model, build_pipeline("window-attn{window=0.25}", initial_facts=CANONICAL))
    assert record.stats["nodes_replaced"] == 2
    with pytest.raises(NoOpError) as err:
        run_pipeline(model, build_pipeline("canonicalize-attn,share-attn{window=0.25}"))
    assert ("share-attn found no self-attention: window-attn before it replaced them; "
            "use share-attn's own window modes instead") in str(err.value).replace("' was asked for but changed "
                                                                                  "nothing:", "")


def test_quant_that_quantizes_nothing_fails():
    with pytest.raises(NoOpError, match="quant' .*quantized no layer: 0 annotated"):
        run_pipeline(model_from_text(RELU), build_pipeline("annotate-precision{scheme=w8a8-dynamic},quant"))
    # Every layer kept (the exclusion regex matches all): also nothing quantized.
    with pytest.raises(NoOpError, match="quantized no layer: 1 annotated, all kept"):
        run_pipeline(model_from_text(MLP), build_pipeline("annotate-precision{scheme=w8a8-dynamic keep=.*},quant"))
    records = run_pipeline(model_from_text(MLP),
                           build_pipeline("annotate-precision{scheme=w8a8-dynamic keep-defaults=false},quant"))
    assert records[-1].stats["quantized"] == 1


def test_smooth_with_nothing_to_balance_fails():
    with pytest.raises(NoOpError, match="smooth' .*no annotated MatMul/Gemm with a static activation"):
        run_pipeline(model_from_text(MLP), build_pipeline("annotate-precision{scheme=w4a16 keep-defaults=false},smooth"),
                     context=PassContext(calibration=[{"x": np.ones((2, 8), np.float32)}]))
