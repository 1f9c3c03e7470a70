"""Cleanup passes: dce, cse, fold-constants, infer-shapes (positive and negative)."""

from __future__ import annotations

import onnx
import onnx.helper
import onnx.parser
import onnx_ir as ir
import pytest
from helpers_onnx import assert_same_outputs, model_from_text, op_counts, proto_bytes, random_feeds, run_ort

from genzip.passes import build_pipeline, get_pass_class
from genzip.passes.infra.invariants import check_full

CLEAN = """<ir_version: 10, opset_import: ["" : 23]>
g (float[2,3] x, float[2,3] y) => (float[2,3] z) {
  a = Add(x, y)
  b = Mul(a, y)
  z = Relu(b)
}"""

WITH_DEAD_CODE = """<ir_version: 10, opset_import: ["" : 23, "com.microsoft" : 1]>
g (float[2,3] x, float[2,3] y) => (float[2,3] z) {
  a = Add(x, y)
  dead1 = Neg(a)
  dead2 = Exp(dead1)
  b = Mul(a, y)
  z = Relu(b)
}"""

WITH_DUPLICATES = """<ir_version: 10, opset_import: ["" : 23]>
g (float[2,3] x, float[2,3] y) => (float[2,3] z) {
  a1 = Add(x, y)
  a2 = Add(x, y)
  r1 = Relu(a1)
  r2 = Relu(a2)
  z = Mul(r1, r2)
}"""

WITH_CONSTANTS = """<ir_version: 10, opset_import: ["" : 23]>
g (float[2,3] x) => (float[2,3] z) {
  c1 = Constant <value = float[3] {1.0, 2.0, 3.0}> ()
  c2 = Constant <value = float[3] {0.5, 0.5, 0.5}> ()
  s = Add(c1, c2)
  e = Exp(s)
  z = Mul(x, e)
}"""


def _run(name: str, model: ir.Model, spec: str | None = None):
    (pass_,) = build_pipeline(spec or name).passes
    return pass_(model)


def _positive(name: str, text: str, infer: bool = True, spec: str | None = None):
    model = model_from_text(text, infer=infer)
    feeds = random_feeds(model)
    before = run_ort(model, feeds)
    result = _run(name, model, spec)
    assert result.modified is True
    check_full(model)
    assert_same_outputs(before, run_ort(model, feeds))
    return model, result


@pytest.mark.parametrize("name", ["dce", "cse", "fold-constants", "infer-shapes"])
def test_clean_model_is_left_untouched(name):
    model = model_from_text(CLEAN)
    snapshot = proto_bytes(model)
    result = _run(name, model)
    assert result.modified is False
    assert proto_bytes(model) == snapshot


@pytest.mark.parametrize("name", ["dce", "cse", "fold-constants", "infer-shapes"])
def test_second_run_changes_nothing(name):
    text = {"dce": WITH_DEAD_CODE, "cse": WITH_DUPLICATES, "fold-constants": WITH_CONSTANTS}.get(name, CLEAN)
    model = model_from_text(text, infer=name != "infer-shapes")
    _run(name, model)
    snapshot = proto_bytes(model)
    assert _run(name, model).modified is False
    assert proto_bytes(model) == snapshot


def test_dce_removes_dead_nodes_and_unused_opsets():
    model, result = _positive("dce", WITH_DEAD_CODE)
    assert op_counts(model) == {"Add": 1, "Mul": 1, "Relu": 1}
    assert "com.microsoft" not in model.opset_imports
    assert result.stats == {"nodes_removed": 2, "functions_removed": 0}


def test_cse_merges_identical_nodes():
    model, result = _positive("cse", WITH_DUPLICATES)
    assert op_counts(model) == {"Add": 1, "Relu": 1, "Mul": 1}
    assert result.stats == {"nodes_merged": 2}


def test_fold_constants_folds_into_initializers():
    model, result = _positive("fold-constants", WITH_CONSTANTS)
    assert op_counts(model) == {"Mul": 1}
    assert len(model.graph.initializers) == 1
    assert result.stats == {"nodes_folded": 4}


WITH_EXPAND = """<ir_version: 10, opset_import: ["" : 23]>
g (float[2,3] x) => (float[2,3] z) {
  c = Constant <value = float {1.5}> ()
  shp = Constant <value = int64[2] {2, 3}> ()
  e = Expand(c, shp)
  z = Mul(x, e)
}"""


def test_fold_constants_respects_the_size_limit():
    # Folding the Expand turns 3 constant elements into 6: over a limit of 2 that is bloat.
    model = model_from_text(WITH_EXPAND)
    snapshot = proto_bytes(model)
    result = _run("fold-constants", model, "fold-constants{size_limit=2}")
    assert result.modified is False and result.stats == {"nodes_folded": 0}
    assert proto_bytes(model) == snapshot
    model, result = _positive("fold-constants", WITH_EXPAND, spec="fold-constants{size_limit=100}")
    assert op_counts(model) == {"Mul": 1}
    assert result.stats == {"nodes_folded": 3}


def test_infer_shapes_types_every_value():
    model, result = _positive("infer-shapes", WITH_DUPLICATES, infer=False)
    for node in model.graph:
        for value in node.outputs:
            assert value.dtype == ir.DataType.FLOAT and list(value.shape) == [2, 3]
    assert result.stats == {"values_typed": 4, "values_refined": 0}  # z was typed already (graph output)
    assert op_counts(model) == {"Add": 2, "Relu": 2, "Mul": 1}


def test_infer_shapes_reports_refined_shapes():
    # A declared [N, 3] that inference narrows to [2, 3] changes the file: modified must say so.
    proto = onnx.parser.parse_model(CLEAN)
    proto.graph.value_info.append(onnx.helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT, ["N", 3]))
    model = ir.from_proto(proto)
    result = _run("infer-shapes", model)
    assert result.modified is True
    assert result.stats == {"values_typed": 1, "values_refined": 1}
    assert [list(v.shape) for n in model.graph for v in n.outputs if v.name == "a"] == [[2, 3]]


def test_registry_names_match_classes():
    for name in ("dce", "cse", "fold-constants", "infer-shapes"):
        assert get_pass_class(name).name == name
