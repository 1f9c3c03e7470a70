"""Pass infrastructure: spec grammar, options, facts, pass manager instrumentation."""

from __future__ import annotations

import dataclasses
import io
import os
from typing import Literal

import onnx
import onnx_ir as ir
import pytest
from helpers_onnx import model_from_text

from genzip.errors import GenzipError
from genzip.passes import (
    GenzipPass,
    GenzipPassResult,
    Instrumentation,
    PassFailure,
    build_pipeline,
    model_facts,
    parse_pipeline,
    print_pipeline,
    run_pipeline,
)
from genzip.passes.infra import facts, registry
from genzip.passes.infra.context import EMPTY
from genzip.passes.infra.invariants import VerificationError, check_structure

MODEL = """<ir_version: 10, opset_import: ["" : 23]>
g (float[2,3] x, float[2,3] y) => (float[2,3] z) {
  a = Add(x, y)
  b = Mul(a, y)
  dead = Neg(a)
  z = Relu(b)
}"""


# --- test-only passes ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class DemoOptions:
    layers: tuple[int, ...] = ()
    window: float = 0.5
    mode: Literal["fast", "exact"] = "fast"
    strict: bool = False
    limit: int | None = None

    def __post_init__(self):
        if not 0 < self.window <= 1:
            raise ValueError("window must be in (0, 1]")


def demo_fact_problem(model):
    """The test fact ``demo-fact``: the graph's doc string is not 'broken'."""
    return "the graph doc string says broken" if model.graph.doc_string == "broken" else None


class DemoPass(GenzipPass):
    name = "demo"
    Options = DemoOptions
    ensures_facts = frozenset({"demo-fact"})

    def run(self, model, context):
        return GenzipPassResult(model, False, {"layers": len(self.options.layers)})


class BrokenPromisePass(GenzipPass):
    """Bug on purpose: promises demo-fact and breaks it."""

    name = "broken-promise"
    ensures_facts = frozenset({"demo-fact"})

    def run(self, model, context):
        model.graph.doc_string = "broken"
        return GenzipPassResult(model, True)


class InvalidatingPass(GenzipPass):
    """Changes the graph (renames a node) and so drops ``demo-fact``."""

    name = "invalidate-demo"
    invalidates_facts = frozenset({"demo-fact"})

    def run(self, model, context):
        next(iter(model.graph)).name = "renamed"
        return GenzipPassResult(model, True)


class NeedsDemoPass(GenzipPass):
    name = "needs-demo"
    requires_facts = frozenset({"demo-fact"})

    def run(self, model, context):
        return GenzipPassResult(model, False)


class DanglingUsePass(GenzipPass):
    """Bug on purpose: removes the Add without rewiring its users."""

    name = "break-dangling"

    def run(self, model, context):
        add = next(n for n in model.graph if n.op_type == "Add")
        model.graph.remove(add, safe=False)
        return GenzipPassResult(model, True)


class OutOfOrderPass(GenzipPass):
    """Bug on purpose: moves the Add after its users."""

    name = "break-order"

    def run(self, model, context):
        add = next(n for n in model.graph if n.op_type == "Add")
        model.graph.remove(add)
        model.graph.append(add)
        return GenzipPassResult(model, True)


class UserErrorPass(GenzipPass):
    name = "user-error"

    def run(self, model, context):
        raise GenzipError("the input is wrong", "fix the input")


class RemoveNegPass(GenzipPass):
    name = "remove-neg"

    def run(self, model, context):
        negs = [n for n in model.graph if n.op_type == "Neg"]
        model.graph.remove(negs, safe=True)
        return GenzipPassResult(model, bool(negs), {"removed": len(negs)})


_TEST_PASSES = [
    DemoPass, InvalidatingPass, NeedsDemoPass, DanglingUsePass, OutOfOrderPass, UserErrorPass, RemoveNegPass,
]


@pytest.fixture(autouse=True)
def test_passes(monkeypatch):
    for cls in _TEST_PASSES:
        monkeypatch.setitem(registry._PASSES, cls.name, f"{__name__}:{cls.__name__}")
    monkeypatch.setitem(facts._FACTS, "demo-fact", (f"{__name__}:demo_fact_problem", "test fact"))


# --- spec grammar --------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        "dce",
        "canonicalize-attn,fold-constants{size_limit=10}",
        "x{layers=0,1,2 window=0.125}",
        "a,b{k=v},c{k1=1 k2=a,b}",
        "window-attn{layers=0,1,2 window=0.125},span-attn",
    ],
)
def test_spec_parse_print_round_trip(spec):
    assert print_pipeline(parse_pipeline(spec)) == spec


def test_spec_values_with_commas_stay_whole():
    (item,) = parse_pipeline("x{layers=0,1,2 window=0.125}")
    assert item.name == "x" and item.options == (("layers", "0,1,2"), ("window", "0.125"))


def test_non_canonical_spelling_prints_canonically():
    assert print_pipeline(parse_pipeline(" dce , cse{a=1   b=2} ")) == "dce,cse{a=1 b=2}"
    assert parse_pipeline("") == [] and parse_pipeline("   ") == []


def test_built_pipeline_prints_its_spec():
    spec = "canonicalize-attn,fold-constants{size_limit=10}"
    assert str(build_pipeline(spec)) == spec


@pytest.mark.parametrize(
    "spec, column, what",
    [
        ("dce,fold-constants{size_limit=10", 19, "never closed"),
        ("fold-constants{size_limit}", 16, "not key=value"),
        ("dce,cse,", 9, "expected a pass name"),
        ("demo{window=0.5 window=0.25}", 17, "given twice"),
        ("dce cse", 5, "unexpected 'c'"),
        ("dce{a{b=1}}", 6, "nested"),
    ],
)
def test_malformed_spec_names_the_column(spec, column, what):
    with pytest.raises(GenzipError, match=f"column {column}: .*{what}"):
        parse_pipeline(spec)


def test_unknown_pass_suggests_a_name():
    with pytest.raises(GenzipError, match=r"unknown pass 'fold-constant' \(did you mean: fold-constants"):
        build_pipeline("dce,fold-constant")


def test_unknown_option_suggests_a_name():
    with pytest.raises(GenzipError, match=r"has no option 'size-limt' \(did you mean: size-limit"):
        build_pipeline("fold-constants{size-limt=3}")


# --- options -------------------------------------------------------------------------


def test_options_are_converted_to_their_declared_types():
    (demo,) = build_pipeline("demo{layers=0,1,2 window=0.125 mode=exact strict=yes limit=7}").passes
    assert demo.options == DemoOptions(layers=(0, 1, 2), window=0.125, mode="exact", strict=True, limit=7)
    (demo,) = build_pipeline("demo{limit=none}").passes
    assert demo.options.limit is None


@pytest.mark.parametrize(
    "spec, message",
    [
        ("demo{window=wide}", "not a number"),
        ("demo{window=2}", "window must be in"),
        ("demo{mode=exakt}", "did you mean: exact"),
        ("demo{strict=maybe}", "not a boolean"),
        ("demo{layers=0,x}", "not an integer"),
        ("fold-constants{size_limit=-1}", "size-limit must be >= 0"),
    ],
)
def test_bad_option_values(spec, message):
    with pytest.raises(GenzipError, match=message):
        build_pipeline(spec)


# --- facts ---------------------------------------------------------------------------


def test_facts_are_checked_statically():
    build_pipeline("demo,needs-demo")
    build_pipeline("needs-demo", initial_facts=frozenset({"demo-fact"}))
    with pytest.raises(GenzipError, match="put demo before it"):
        build_pipeline("needs-demo")
    with pytest.raises(GenzipError, match="requires 'demo-fact'"):
        build_pipeline("demo,invalidate-demo,needs-demo")


def test_fact_without_a_provider_still_gives_a_clean_error(monkeypatch):
    # Registered passes whose module is missing must not break the hint lookup.
    monkeypatch.setitem(registry._PASSES, "not-written-yet", "genzip.passes.does_not_exist:Nope")
    monkeypatch.setattr(NeedsDemoPass, "requires_facts", frozenset({"nobody-makes-this"}))
    with pytest.raises(GenzipError, match="establish it earlier"):
        build_pipeline("needs-demo")


def test_facts_are_recorded_on_the_model_and_invalidated_by_changes():
    model = model_from_text(MODEL)
    model.graph.doc_string = "broken"
    with pytest.raises(ir.passes.PreconditionError, match="demo-fact"):
        NeedsDemoPass()(model)
    model.graph.doc_string = None
    DemoPass()(model)
    assert model_facts(model) == {"demo-fact"}
    NeedsDemoPass()(model)
    InvalidatingPass()(model)
    assert model_facts(model) == set()


def test_requires_checks_the_graph_not_the_recorded_facts():
    model = model_from_text(MODEL)
    model.graph.doc_string = "broken"
    model.metadata_props["genzip.facts"] = "demo-fact"  # a claim the graph does not back
    with pytest.raises(ir.passes.PreconditionError, match="doc string"):
        NeedsDemoPass()(model)


def test_a_pass_that_breaks_its_promise_fails_its_postcondition():
    model = model_from_text(MODEL)
    with pytest.raises(ir.passes.PostconditionError, match="did not establish demo-fact: the graph doc string says"):
        BrokenPromisePass()(model)
    assert model_facts(model) == set()  # nothing recorded for a failed promise


def test_every_fact_a_registered_pass_names_has_a_checker():
    for name in registry.pass_names():
        cls = registry.get_pass_class(name)
        for fact in cls.requires_facts | cls.ensures_facts | cls.invalidates_facts:
            assert callable(facts.checker(fact)), (name, fact)


# --- pass manager --------------------------------------------------------------------


def test_verification_catches_a_dangling_use_and_writes_a_reproducer(tmp_path):
    model = model_from_text(MODEL)
    before = ir.to_proto(model)
    repro = tmp_path / "repro"
    inst = Instrumentation(verify="structure", reproducer_dir=str(repro))
    with pytest.raises(PassFailure, match="nothing defines") as err:
        run_pipeline(model, build_pipeline("remove-neg,break-dangling"), inst)
    assert err.value.pass_name == "break-dangling"
    assert err.value.reproducer == str(repro)
    assert sorted(os.listdir(repro)) == ["README.md", "error.txt", "model.onnx", "spec.txt"]
    assert (repro / "spec.txt").read_text() == "break-dangling\n"
    saved = onnx.load(str(repro / "model.onnx"))
    # The input of the failing pass: remove-neg already ran, break-dangling had not.
    assert [n.op_type for n in saved.graph.node] == ["Add", "Mul", "Relu"]
    assert saved.graph.input == before.graph.input


def test_verification_catches_out_of_order_nodes(tmp_path):
    model = model_from_text(MODEL)
    before = ir.to_proto(model)
    inst = Instrumentation(verify="full", reproducer_dir=str(tmp_path / "r"))
    with pytest.raises(PassFailure, match="not topologically sorted"):
        run_pipeline(model, build_pipeline("break-order"), inst)
    assert onnx.load(str(tmp_path / "r" / "model.onnx")) == before
    assert (tmp_path / "r" / "spec.txt").read_text() == "break-order\n"


def test_check_structure_accepts_a_valid_model():
    check_structure(model_from_text(MODEL))
    with pytest.raises(VerificationError):
        model = model_from_text(MODEL)
        DanglingUsePass().run(model, EMPTY)
        check_structure(model)


def test_user_errors_pass_through_without_a_reproducer(tmp_path):
    model = model_from_text(MODEL)
    inst = Instrumentation(reproducer_dir=str(tmp_path / "r"))
    with pytest.raises(GenzipError, match="the input is wrong"):
        run_pipeline(model, build_pipeline("user-error"), inst)
    assert not (tmp_path / "r").exists()


def test_print_ir_after_named_pass():
    stream = io.StringIO()
    inst = Instrumentation(print_ir_after=frozenset({"remove-neg"}), stream=stream)
    run_pipeline(model_from_text(MODEL), build_pipeline("demo,remove-neg"), inst)
    text = stream.getvalue()
    assert text.count("// -----// IR after") == 1
    assert "// -----// IR after remove-neg (modified=True) //----- //" in text
    assert "Relu" in text and "Neg" not in text


def test_print_ir_after_change_and_all():
    stream = io.StringIO()
    run_pipeline(model_from_text(MODEL), build_pipeline("demo,remove-neg"),
                 Instrumentation(print_ir_after_change=True, stream=stream))
    assert stream.getvalue().count("// -----// IR after") == 1
    stream = io.StringIO()
    run_pipeline(model_from_text(MODEL), build_pipeline("demo,remove-neg"),
                 Instrumentation(print_ir_after=frozenset({"all"}), stream=stream))
    assert "IR after demo (modified=False)" in stream.getvalue()


def test_pass_timing_and_records():
    stream = io.StringIO()
    progress = []
    inst = Instrumentation(pass_timing=True, stream=stream, progress=lambda i, n, name: progress.append((i, n, name)))
    records = run_pipeline(model_from_text(MODEL), build_pipeline("demo{layers=1,2},remove-neg"), inst)
    assert [(r.name, r.spec, r.modified, r.stats) for r in records] == [
        ("demo", "demo{layers=1,2}", False, {"layers": 2}),
        ("remove-neg", "remove-neg", True, {"removed": 1}),
    ]
    assert progress == [(0, 2, "demo"), (1, 2, "remove-neg")]
    text = stream.getvalue()
    assert "Pass execution timing report" in text and "Total Execution Time" in text
    assert "demo{layers=1,2}  modified=False layers=2" in text
    assert "remove-neg  modified=True removed=1" in text
