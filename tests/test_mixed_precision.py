"""mixed-precision and annotate-precision{plan=}: budgets, plan files, uniform equivalence, report."""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir
import pytest
from quant_models import apply, conv, feeds_for, mlp

from genzip.errors import GenzipError
from genzip.passes import build_pipeline
from genzip.passes.infra.spec import parse_pipeline, print_pipeline
from genzip.passes.precision._bit_allocation import brute_force
from genzip.passes.precision.mixed_precision import LATENCY, PLAN_KEY, MixedPrecisionPass, Options, cost_matrix
from genzip.passes.precision.sensitivity import RESULT_KEY
from genzip.passes.quant._plan import read_plan, write_plan

DIMS = (64, 64, 64, 64, 64, 32)  # 5 MatMuls mm0..mm4


def _model():
    return mlp(dims=DIMS, tokens=16)


def _calib():
    return feeds_for(_model(), 7, n=3)


def _graph_bytes(model: ir.Model) -> bytes:
    return ir.to_proto(model).graph.SerializeToString()


def _mixed(tmp_path, budget: str, candidates="w8a8,w4a16,fp16", extra="", model=None):
    model = model or _model()
    spec = (f"annotate-precision{{keep-defaults=false}},sensitivity{{candidates={candidates} cache={tmp_path}}},"
            f"mixed-precision{{budget={budget} plan={tmp_path / 'plan.json'}{extra}}}")
    results = apply(model, spec, _calib())
    return model, results[-1].stats


@pytest.mark.parametrize("budget", [4.5, 6.0, 9.0])
def test_milp_equals_brute_force_on_the_measured_costs_and_meets_the_budget(tmp_path, budget):
    model, stats = _mixed(tmp_path, f"avg-bits:{budget}")
    body = json.loads(model.metadata_props[RESULT_KEY])
    params = [layer["params"] for layer in body["layers"]]
    cost = cost_matrix(body, "auto")
    ref = brute_force(params, body["formats"], [8, 4, 16], cost, avg_bits=budget)
    summary = json.loads(model.metadata_props[PLAN_KEY])
    chosen = [body["formats"].index(f) for f in summary["plan"].values()]
    assert cost[np.arange(len(params)), chosen].sum() == pytest.approx(ref.objective, rel=1e-9, abs=1e-12)
    assert summary["avg_weight_bits"] <= budget + 1e-9 and stats["avg_weight_bits"] == summary["avg_weight_bits"]
    assert read_plan(str(tmp_path / "plan.json")) == summary["plan"]


def test_plan_round_trip_reproduces_the_annotations(tmp_path):
    model, _ = _mixed(tmp_path, "avg-bits:6")
    again = _model()
    apply(again, f"annotate-precision{{plan={tmp_path / 'plan.json'}}}")
    def specs(m):
        return {n.name: n.metadata_props["genzip.quant"] for n in m.graph if "genzip.quant" in n.metadata_props}

    assert specs(again) == specs(model)


def test_all_w8a8_plan_gives_exactly_the_uniform_w8a8_graph(tmp_path):
    calib = _calib()
    uniform = _model()
    apply(uniform, "annotate-precision{scheme=w8a8},calibrate{use-cache=false},quant{scheme=w8a8}", calib)
    layers = ["mm1", "mm2", "mm3"]  # default keeps hold mm0 (first) and mm4 (last)
    write_plan(str(tmp_path / "w8.json"), dict.fromkeys(layers, "w8a8"), {})
    planned = _model()
    spec = f"annotate-precision{{plan={tmp_path / 'w8.json'}}},calibrate{{use-cache=false}},quant{{scheme=w8a8}}"
    apply(planned, spec, calib)
    assert _graph_bytes(planned) == _graph_bytes(uniform)
    # The allocator with only w8a8 to choose lands on the same graph.
    allocated = _model()
    spec = (f"annotate-precision,sensitivity{{candidates=w8a8 cache={tmp_path}}},mixed-precision{{budget=avg-bits:8}},"
            "calibrate{use-cache=false},quant{scheme=w8a8}")
    apply(allocated, spec, calib)
    assert _graph_bytes(allocated) == _graph_bytes(uniform)


def test_unknown_or_stale_plan_key_is_a_one_line_error(tmp_path):
    write_plan(str(tmp_path / "p.json"), {"mm1": "w8a8", "mm9": "w4a16"}, {})
    with pytest.raises(GenzipError, match=r"names layer 'mm9'.*not a quantizable node") as e:
        apply(_model(), f"annotate-precision{{plan={tmp_path / 'p.json'}}}")
    assert "\n" not in str(e.value)
    write_plan(str(tmp_path / "c.json"), {"conv": "w4a16"}, {})
    with pytest.raises(GenzipError, match="w4a16 covers MatMul/Gemm only"):
        apply(conv(), f"annotate-precision{{plan={tmp_path / 'c.json'}}}")


@pytest.mark.parametrize("text,match", [
    ('{"version": 1, "layers": {"mm1": "w8a8",}}', r"not valid JSON \(line 1"),
    ('{"layers": {"mm1": "w8a8"}}', "not a version-1 plan"),
    ('{"version": 1, "layers": {"mm1": "w3a8"}}', "unknown format 'w3a8'"),
])
def test_corrupt_plan_json_is_a_one_line_error(tmp_path, text, match):
    (tmp_path / "bad.json").write_text(text)
    with pytest.raises(GenzipError, match=match) as e:
        apply(_model(), f"annotate-precision{{plan={tmp_path / 'bad.json'}}}")
    assert "\n" not in str(e.value)


def test_infeasible_budgets_name_the_minimum(tmp_path):
    with pytest.raises(GenzipError, match="avg-bits:3 is infeasible: the minimum achievable is 4 bits"):
        _mixed(tmp_path, "avg-bits:3")
    params = sum(a * b for a, b in zip(DIMS[:-1], DIMS[1:]))
    with pytest.raises(GenzipError, match=f"minimum achievable is {params * 4 / 8 / 2**20:.4g} MB"):
        _mixed(tmp_path, "memory:0.001")
    with pytest.raises(GenzipError, match="latency:0.1 is infeasible: the minimum achievable is 0.5"):
        _mixed(tmp_path, "latency:0.1")


def test_memory_and_latency_budgets_are_met(tmp_path):
    model, _ = _mixed(tmp_path, "memory:0.05")
    assert json.loads(model.metadata_props[PLAN_KEY])["weight_mb"] <= 0.05
    model, _ = _mixed(tmp_path, "latency:0.7")
    body = json.loads(model.metadata_props[RESULT_KEY])
    plan = json.loads(model.metadata_props[PLAN_KEY])["plan"]
    modeled = sum(layer["params"] * LATENCY[plan[layer["key"]]] for layer in body["layers"])
    assert modeled <= 0.7 * sum(layer["params"] for layer in body["layers"]) + 1e-6


def test_options_validate_and_spec_round_trips():
    spec = ("annotate-precision,sensitivity{candidates=w8a8,w4a16 samples=3},"
            "mixed-precision{budget=memory:12.5 objective=sqnr}")
    assert print_pipeline(parse_pipeline(spec)) == spec
    build_pipeline(spec)
    with pytest.raises(GenzipError, match="must be avg-bits:B, memory:MB or latency:RATIO"):
        build_pipeline("annotate-precision,sensitivity,mixed-precision{budget=bits:4}")
    with pytest.raises(GenzipError, match="put sensitivity before it|sensitivity"):
        build_pipeline("annotate-precision,mixed-precision")


def test_int4_is_never_offered_to_a_conv(tmp_path):
    model = conv()
    apply(model, f"annotate-precision{{keep-defaults=false}},sensitivity{{candidates=w8a8,w4a16 cache={tmp_path}}}",
          feeds_for(model, 2, n=2))
    layer = json.loads(model.metadata_props[RESULT_KEY])["layers"][0]
    assert layer["cost"]["sqnr"][1] is None and layer["cost"]["sqnr"][0] > 0
    with pytest.raises(GenzipError, match="minimum achievable is 8 bits"):
        MixedPrecisionPass(Options(budget="avg-bits:4"))(model)
    MixedPrecisionPass(Options(budget="avg-bits:8"))(model)
    assert json.loads(model.metadata_props[PLAN_KEY])["plan"] == {"conv": "w8a8"}


def test_objective_must_be_a_measured_metric(tmp_path):
    with pytest.raises(GenzipError, match="measured only sqnr"):
        _mixed(tmp_path, "avg-bits:6", extra=" objective=kl")


def test_compiled_artifact_reports_bits_plot_table_and_plan(tmp_path, monkeypatch):
    from genzip.compile import CompileOptions, compile_model

    monkeypatch.setenv("GENZIP_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "art"
    spec = ("annotate-precision,sensitivity{candidates=w8a8,w4a16,fp16},mixed-precision{budget=avg-bits:6},"
            "calibrate,quant")
    manifest = compile_model("tiny-llama", str(out), CompileOptions(target="onnx", passes=spec))
    mp = manifest["mixed_precision"]
    assert mp["avg_weight_bits"] <= 6 and 8 <= mp["avg_activation_bits"] <= 16
    assert mp["sensitivity"]["metrics"] == ["kl", "grad"]  # LLM: KL + LLM-MQ first order (torch source)
    assert (out / "precision_bits.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "## Mixed precision" in report and "| `model.layers.1.mlp.down_proj` |" in report
    plan = read_plan(str(out / "precision_plan.json"))
    sens = manifest["pass_stats"][1]["stats"]
    assert sum(mp["formats"].values()) == len(plan) == sens["layers"] and sens["unmeasured"] == 0
    quant = next(p["stats"] for p in manifest["pass_stats"] if p["pass"] == "quant")
    assert quant["quantized"] == len(plan) - mp["formats"].get("fp16", 0)
    assert set(manifest["files"]) >= {"precision_plan.json", "precision_bits.png"}
