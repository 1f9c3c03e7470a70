"""Property-based tests (hypothesis) over small random graphs, inputs and pipelines:

* no pass ever raises anything but a ``GenzipError`` (a user error with a one-line fix);
* the exact passes (cleanup, canonicalize-attn) preserve the outputs in ORT;
* a compile that fails leaves no partial artifact and no stray temp folder.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from helpers_onnx import assert_same_outputs, run_ort
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genzip.compile import CompileOptions, compile_model
from genzip.errors import GenzipError
from genzip.passes import build_pipeline, get_pass_class, pass_names, run_pipeline
from genzip.passes.infra.context import PassContext

EXACT = ["dce", "cse", "fold-constants", "infer-shapes", "canonicalize-attn"]
# Well-formed pipeline pieces (most random name lists fail the parse-time fact check), and
# every registered pass that requires no fact, alone, so new passes are drawn too.
SNIPPETS = EXACT + [
    "canonicalize-attn,window-attn{window=0.5}",
    "canonicalize-attn,span-attn{alpha=1 beta=0 sinks=1}",
    "canonicalize-attn,share-attn{window=0.5}",
    "canonicalize-attn,window-attn{window=0.5 allow-noop=true}",
    "annotate-precision,calibrate,quant",
    "annotate-precision{scheme=w8a8-dynamic keep-defaults=false},quant",
    "annotate-precision{scheme=w4a16 keep-defaults=false},quant{scheme=w4a16}",
    "annotate-precision{keep-defaults=false},smooth,calibrate,quant",
    "annotate-precision{keep-defaults=false},sensitivity{candidates=w8a8,fp16},mixed-precision{budget=avg-bits:12}",
    "legalize-trt{trt-version=10.13}",
] + [n for n in pass_names() if not get_pass_class(n).requires_facts]
SETTINGS = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# Each step reads the running value h (float[2, D]) and yields the next one.
STEPS = ["relu", "add_const", "mul_const", "matmul", "duplicate", "dead", "folded", "attention"]


@st.composite
def graphs(draw):
    """A random float[2, D] -> float[2, D] graph (plus its steps, for failure messages)."""
    d = draw(st.sampled_from([4, 8]))
    steps = draw(st.lists(st.sampled_from(STEPS), min_size=1, max_size=6))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    nodes, inits, h = [], [], "x"

    def const(name, shape):
        inits.append(onnx.numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name))
        return name

    for i, step in enumerate(steps):
        out = f"h{i}"
        if step == "relu":
            nodes.append(onnx.helper.make_node("Relu", [h], [out]))
        elif step in ("add_const", "mul_const"):
            op = "Add" if step == "add_const" else "Mul"
            nodes.append(onnx.helper.make_node(op, [h, const(f"c{i}", [d])], [out]))
        elif step == "matmul":
            nodes.append(onnx.helper.make_node("MatMul", [h, const(f"w{i}", [d, d])], [out]))
        elif step == "duplicate":  # two identical Relus added: cse merges them
            nodes += [onnx.helper.make_node("Relu", [h], [f"a{i}"]), onnx.helper.make_node("Relu", [h], [f"b{i}"]),
                      onnx.helper.make_node("Add", [f"a{i}", f"b{i}"], [out])]
        elif step == "dead":  # a branch nothing reads: dce removes it
            nodes += [onnx.helper.make_node("Neg", [h], [f"dead{i}"]), onnx.helper.make_node("Identity", [h], [out])]
        elif step == "folded":  # constant arithmetic: fold-constants evaluates it
            nodes += [onnx.helper.make_node("Add", [const(f"p{i}", [d]), const(f"q{i}", [d])], [f"s{i}"]),
                      onnx.helper.make_node("Mul", [h, f"s{i}"], [out])]
        else:  # self-attention over the 2 rows as a decomposed chain: canonicalize-attn rewrites it
            nodes += [
                onnx.helper.make_node("Reshape", [h, const(f"shape{i}", [0])], [f"r{i}"]),
                onnx.helper.make_node("Transpose", [f"r{i}"], [f"t{i}"], perm=[0, 1, 3, 2]),
                onnx.helper.make_node("MatMul", [f"r{i}", f"t{i}"], [f"s{i}"]),
                onnx.helper.make_node("Mul", [f"s{i}", f"k{i}"], [f"m{i}"]),
                onnx.helper.make_node("Softmax", [f"m{i}"], [f"p{i}"], axis=-1),
                onnx.helper.make_node("MatMul", [f"p{i}", f"r{i}"], [f"o{i}"]),
                onnx.helper.make_node("Reshape", [f"o{i}", f"back{i}"], [out]),
            ]
            inits[-1] = onnx.numpy_helper.from_array(np.array([1, 1, 2, d], np.int64), f"shape{i}")
            inits.append(onnx.numpy_helper.from_array(np.array(1 / np.sqrt(d), np.float32), f"k{i}"))
            inits.append(onnx.numpy_helper.from_array(np.array([2, d], np.int64), f"back{i}"))
        h = out
    graph = onnx.helper.make_graph(
        nodes, "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, d])],
        [onnx.helper.make_tensor_value_info(h, onnx.TensorProto.FLOAT, [2, d])], inits)
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 23)], ir_version=10)
    proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    return proto, steps


def _feeds(proto: onnx.ModelProto, seed: int = 1) -> dict[str, np.ndarray]:
    d = proto.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    return {"x": np.random.default_rng(seed).standard_normal((2, d)).astype(np.float32)}


# Hypothesis favours the first entries of sampled_from; every snippet leads in its own case,
# followed by random ones.
@pytest.mark.parametrize("head", SNIPPETS)
@settings(SETTINGS, max_examples=3)
@given(graph=graphs(), tail=st.lists(st.sampled_from(SNIPPETS), max_size=2))
def test_no_pass_raises_anything_but_a_genzip_error(head, graph, tail):
    proto, steps = graph
    names = [head, *tail]
    model = ir.from_proto(proto)
    context = PassContext(example_inputs=_feeds(proto), calibration=[_feeds(proto, s) for s in range(2)])
    try:
        run_pipeline(model, build_pipeline(",".join(names)), context=context)
    except GenzipError as e:
        assert "\n" not in str(e), f"{names} on {steps}: a multi-line error"


@SETTINGS
@given(graphs(), st.lists(st.sampled_from(EXACT), min_size=1, max_size=5))
def test_exact_passes_preserve_outputs(graph, names):
    proto, steps = graph
    model = ir.from_proto(proto)
    feeds = _feeds(proto)
    before = run_ort(model, feeds)
    run_pipeline(model, build_pipeline(",".join(names)))
    assert_same_outputs(before, run_ort(model, feeds))


FAILING = [
    ("canonicalize-attn,window-attn", {}),  # no attention window-attn could replace, or nothing it may
    ("annotate-precision{scheme=w8a8-dynamic keep-defaults=false},quant", {"min_cosine": 1.0}),  # fidelity gate
    ("infer-shapes", {"min_cosine": 1.0, "target": "nope"}),  # bad target
]


@SETTINGS
@given(graphs(), st.sampled_from(FAILING))
def test_a_failed_compile_leaves_nothing_behind(tmp_path_factory, graph, failing):
    proto, steps = graph
    work = tmp_path_factory.mktemp("fail")
    src = os.path.join(work, "m.onnx")
    onnx.save(proto, src)
    spec, extra = failing
    out = os.path.join(work, "art")
    try:
        compile_model(src, out, CompileOptions(passes=spec, target=extra.get("target", "onnx"),
                                               min_cosine=extra.get("min_cosine", 0.99)))
    except GenzipError:
        assert not os.path.exists(out), f"{spec} on {steps} left {out}"
    else:
        assert os.path.isfile(os.path.join(out, "genzip.json"))  # it may succeed (e.g. exact quant)
    assert sorted(os.listdir(work)) == (["art", "m.onnx"] if os.path.exists(out) else ["m.onnx"])
