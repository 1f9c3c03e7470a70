"""Fact checkers inspect the graph: each catches the violation it names, and a
registered pass that breaks its promise fails its postcondition."""

from __future__ import annotations

import json

import onnx_ir as ir
import pytest
from helpers_onnx import model_from_text
from quant_models import feeds_for, mlp

from genzip.metadata import QUANT_KEY
from genzip.passes import build_pipeline, model_facts
from genzip.passes.attention.canonicalize_attn import CanonicalizeAttentionPass
from genzip.passes.infra import facts
from genzip.passes.infra.context import PassContext


def apply(model, spec: str, calib=None) -> None:
    """Run ``spec`` as a continuation of the passes that already ran on ``model``."""
    for p in build_pipeline(spec, initial_facts=frozenset(model_facts(model))).passes:
        p(model, PassContext(calibration=calib))


ATTENTION_3D = """<ir_version: 10, opset_import: ["" : 23]>
g (float[1, 6, 32] q, float[1, 6, 32] k, float[1, 6, 32] v) => (float[1, 6, 32] y) {
    y = Attention <q_num_heads = 4, kv_num_heads = 4> (q, k, v)
}"""


def test_attention_canonical_holds_only_after_canonicalize_attn():
    model = model_from_text(ATTENTION_3D)
    assert "is not canonical: input 0 has rank 3" in facts.problem("attention-canonical", model)
    CanonicalizeAttentionPass()(model)
    assert facts.problem("attention-canonical", model) is None


class LazyCanonicalize(CanonicalizeAttentionPass):
    """Bug on purpose: claims canonical form without rewriting anything."""

    def run(self, model, context):
        from genzip.passes.infra.contract import GenzipPassResult

        return GenzipPassResult(model, False, {})


def test_a_canonicalize_that_does_nothing_fails_its_postcondition():
    model = model_from_text(ATTENTION_3D)
    with pytest.raises(ir.passes.PostconditionError, match="did not establish attention-canonical"):
        LazyCanonicalize()(model)


def test_quant_facts_track_the_annotations():
    model = mlp(seed=1)
    assert facts.problem("quant-annotated", model) is None  # nothing annotated: holds vacuously
    apply(model, "annotate-precision")
    assert facts.problem("quant-calibrated", model).endswith("range")
    assert "left unconsumed" in facts.problem("quantized", model)
    node = next(n for n in model.graph if QUANT_KEY in n.metadata_props)
    body = json.loads(node.metadata_props[QUANT_KEY])
    node.metadata_props[QUANT_KEY] = json.dumps({**body, "op": "Conv"})
    assert "annotation is for Conv" in facts.problem("quant-annotated", model)
    node.metadata_props[QUANT_KEY] = json.dumps(body)
    apply(model, "calibrate", feeds_for(model, seed=2, n=2))
    assert facts.problem("quant-calibrated", model) is None
    apply(model, "quant")
    assert facts.problem("quantized", model) is None


def test_sensitivity_measured_needs_the_table():
    model = mlp(seed=2)
    apply(model, "annotate-precision")
    assert "no genzip.sensitivity table" in facts.problem("sensitivity-measured", model)
    apply(model, "sensitivity{samples=1}", feeds_for(model, seed=3, n=1))
    assert facts.problem("sensitivity-measured", model) is None
