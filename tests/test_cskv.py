"""``cskv``: the low-rank bi-branch KV cache. A hand-built cache graph checks the rewrite
against its NumPy twin (features, int8 rows, window, what attention reads); a 1-layer
Llama checks generate(): full rank and a window longer than the sequence reproduce the
original, and a compressed cache holds the bytes the layout says."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from genzip.backends import genai_config
from genzip.errors import GenzipError
from genzip.ort_session import make_session
from genzip.passes import build_pipeline, run_pipeline
from genzip.passes.infra.context import PassContext
from genzip.passes.infra.facts import problem
from genzip.passes.quant._cskv_layout import compress, compress_feeds, fit_basis, layout
from genzip.passes.quant._kv_layout import quantize_rows

HEADS, DIM, VOCAB = 2, 4, 16


def _cache_graph() -> ir.Model:
    """new = table[input_ids] as [b, 2, s, 4]; present.0.key = Concat(past, new);
    logits = Identity(present.0.key): the K attention would read."""
    past, present = "past_key_values.0.key", "present.0.key"
    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["rows"]),
             helper.make_node("Reshape", ["rows", "shape"], ["split"]),
             helper.make_node("Transpose", ["split"], ["new"], perm=[0, 2, 1, 3]),
             helper.make_node("Concat", [past, "new"], [present], axis=2),
             helper.make_node("Identity", [present], ["logits"])]
    table = np.random.default_rng(1).standard_normal((VOCAB, HEADS * DIM)).astype(np.float32)
    inits = [helper.make_tensor("table", TensorProto.FLOAT, table.shape, table.ravel()),
             helper.make_tensor("shape", TensorProto.INT64, [4], [0, 0, HEADS, DIM])]
    graph = helper.make_graph(
        nodes, "cache",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"]),
         helper.make_tensor_value_info(past, TensorProto.FLOAT, ["b", HEADS, "p", DIM])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", HEADS, "t", DIM]),
         helper.make_tensor_value_info(present, TensorProto.FLOAT, ["b", HEADS, "t", DIM])], inits)
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)]))


def _run(model: ir.Model, feeds):
    session = make_session(ir.to_proto(model).SerializeToString())
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def _calibration():
    rng = np.random.default_rng(2)
    return [{"input_ids": rng.integers(0, VOCAB, (1, 12))} for _ in range(2)]


@pytest.mark.parametrize("int8", [False, True])
def test_rewrite_matches_numpy_twin(int8):
    model = _cache_graph()
    table = model.graph.initializers["table"].const_value.numpy()
    rng = np.random.default_rng(0)
    past_ids, ids = rng.integers(0, VOCAB, (1, 5)), rng.integers(0, VOCAB, (1, 2))
    past = table[past_ids].reshape(1, 5, HEADS, DIM).transpose(0, 2, 1, 3).copy()
    new = table[ids].reshape(1, 2, HEADS, DIM).transpose(0, 2, 1, 3)
    spec = f"cskv{{rank=4 window=3 int8={str(int8).lower()}}}"
    records = run_pipeline(model, build_pipeline(spec), context=PassContext(calibration=_calibration()))
    assert records[0].modified and records[0].stats["rank"] == 4 and records[0].stats["caches"] == 1
    assert problem("kv-lowrank", model) is None
    assert "cskv" in genai_config.unsupported(model, 1)  # no genai_config.json for this cache
    names = ["input_ids", "past_key_values.0.key", *(["past_key_values.0.key_scale"] if int8 else []),
             "past_key_values.0.key_window"]
    assert [v.name for v in model.graph.inputs] == names
    slot = layout(model)["slots"]["past_key_values.0.key"]
    basis = model.graph.initializers[slot["basis"]].const_value.numpy()
    # The basis is the SVD of the calibration rows (the table rows the samples pick).
    rows = np.concatenate([table[s["input_ids"][0]] for s in _calibration()])
    np.testing.assert_allclose(np.abs(basis), np.abs(fit_basis(rows, 4)[0]), atol=1e-5)

    feeds = compress_feeds(model, {"input_ids": ids, "past_key_values.0.key": past})
    got = _run(model, feeds)
    total = np.concatenate([past, new], axis=2)
    feats = compress(total, basis, HEADS)
    if int8:
        q, s = quantize_rows(feats)
        np.testing.assert_array_equal(got["present.0.key"], q)
        np.testing.assert_allclose(got["present.0.key_scale"], s, rtol=1e-6)
        feats = q.astype(np.float32) * s
    else:
        np.testing.assert_allclose(got["present.0.key"], feats, atol=1e-5)
    np.testing.assert_array_equal(got["present.0.key_window"], total[:, :, -3:])
    restored = feats.transpose(0, 2, 1, 3).reshape(1, 7, -1) @ basis.T
    restored = restored.reshape(1, 7, HEADS, DIM).transpose(0, 2, 1, 3)
    # Attention reads the reconstruction for the 4 older tokens and the exact 3-token window.
    np.testing.assert_allclose(got["logits"][:, :, :4], restored[:, :, :4], atol=1e-4)
    np.testing.assert_array_equal(got["logits"][:, :, 4:], total[:, :, 4:])
    assert np.abs(got["logits"][:, :, :4] - total[:, :, :4]).max() > 1e-3  # rank 4 of 8 is lossy


def test_fit_basis_is_the_best_rank_r_reconstruction():
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((200, 3)) @ rng.standard_normal((3, 8))  # rank 3
    basis, error = fit_basis(rows, 3)
    assert error < 1e-6 and np.allclose(basis.T @ basis, np.eye(3), atol=1e-5)
    noisy = rows + 0.1 * rng.standard_normal(rows.shape)
    basis, error = fit_basis(noisy, 3)
    measured = np.linalg.norm(noisy - noisy @ basis @ basis.T) / np.linalg.norm(noisy)
    assert abs(error - measured) < 1e-5
    other = np.linalg.qr(rng.standard_normal((8, 3)))[0]  # any other rank-3 projection is worse
    assert np.linalg.norm(noisy - noisy @ other @ other.T) / np.linalg.norm(noisy) > error


def test_refusals():
    context = PassContext(calibration=_calibration())
    model = _cache_graph()
    with pytest.raises(GenzipError, match="multiple of kv_heads"):
        run_pipeline(model, build_pipeline("cskv{rank=3}"), context=context)
    model = _cache_graph()
    run_pipeline(model, build_pipeline("cskv{ratio=0.5}"), context=context)
    with pytest.raises(GenzipError, match="already low-rank"):
        run_pipeline(model, build_pipeline("cskv{ratio=0.5}"), context=context)
    plain = ir.from_proto(helper.make_model(helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])))
    with pytest.raises(GenzipError, match="no cache update"):
        run_pipeline(plain, build_pipeline("cskv{rank=2}"), context=context)
    assert build_pipeline("cskv").passes[0].options.ratio == 0.5
    for both in ("cskv,kv-quant", "kv-quant,cskv"):
        with pytest.raises(GenzipError, match="cannot run after"):
            build_pipeline(both)
    for bad in ("cskv{rank=2 ratio=0.5}", "cskv{ratio=0}", "cskv{rank=2 window=-1}"):
        with pytest.raises(GenzipError):
            build_pipeline(bad)


# --- generate() on a 1-layer Llama with a KV cache ---------------------------------------

VARIANTS = {"fp32": "", "full-rank": "cskv{rank=8}", "long-window": "cskv{rank=2 window=64}",
            "compressed": "cskv{rank=2 window=4 int8=true}",
            "compressed-rebuilt": "cskv{rank=2 window=4 int8=true absorb=false}"}


@pytest.fixture(scope="module")
def lms(tmp_path_factory):
    import torch
    from tiny_llm import one_layer_llama_folder

    import genzip
    from genzip.compile import CompileOptions, compile_source
    from genzip.frontend.loader import load_model

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("cskv")
    source = load_model(one_layer_llama_folder(root / "hf"), kv_cache=True)
    out = {}
    for name, passes in VARIANTS.items():
        copy = source.copy()
        compile_source(copy, str(root / name), CompileOptions(target="onnx", passes=passes, min_cosine=0.0))
        out[name] = genzip.load(str(root / name), threads=2)
    return out


def test_generate_equals_original_at_full_rank_or_full_window(lms):
    prompt = np.array([[3, 9, 27, 17, 5]])
    ref = lms["fp32"].generate(prompt, max_new_tokens=12)
    windows = np.random.default_rng(0).integers(0, 64, (2, 20))
    scores = lms["fp32"].score(windows, chunk=1)
    for name in ("full-rank", "long-window"):
        got = lms[name].generate(prompt, max_new_tokens=12)
        np.testing.assert_array_equal(got.sequences, ref.sequences)
        np.testing.assert_allclose(lms[name].score(windows, chunk=1), scores, atol=1e-4)


def test_compressed_cache_runs_and_holds_fewer_bytes(lms):
    prompt = np.array([[3, 9, 27, 17, 5]])
    ref, got = (lms[n].generate(prompt, max_new_tokens=12) for n in ("fp32", "compressed"))
    assert got.sequences.shape == ref.sequences.shape
    capacity, slots = 17, {s.past: s for s in lms["compressed"].slots}
    assert slots["past_key_values.0.key_window"].keep == 4 and slots["past_key_values.0.key"].dtype == np.int8
    # Per K/V: 17 tokens x (2 int8 features + one float scale) + 4 window rows x 8 floats; fp32: 17 x 8 floats.
    assert ref.kv_bytes == 2 * capacity * 8 * 4
    assert got.kv_bytes == 2 * (capacity * (2 + 4) + 4 * 8 * 4) and got.peak_kv_bytes == 2 * got.kv_bytes
    windows = np.random.default_rng(0).integers(0, 64, (2, 20))
    assert not np.allclose(lms["compressed"].score(windows, chunk=1), lms["fp32"].score(windows, chunk=1))


def test_absorbed_attention_equals_the_reconstruct_form(lms):
    """absorb=true (default) folds the bases into the query and output instead of rebuilding
    K/V: the same tokens and scores, over prompts longer than the window (features and exact
    window both read) and one token per run (decode)."""
    stats = {m["pass"].split("{")[0]: m["stats"] for m in lms["compressed"].manifest["pass_stats"]}["cskv"]
    rebuilt = {m["pass"].split("{")[0]: m["stats"]
               for m in lms["compressed-rebuilt"].manifest["pass_stats"]}["cskv"]
    assert (stats["absorbed"], stats["reconstructed"]) == (1, 0)
    assert (rebuilt["absorbed"], rebuilt["reconstructed"]) == (0, 2)
    prompt = np.array([[3, 9, 27, 17, 5]])
    a, r = (lms[n].generate(prompt, max_new_tokens=12) for n in ("compressed", "compressed-rebuilt"))
    np.testing.assert_array_equal(a.sequences, r.sequences)
    assert a.kv_bytes == r.kv_bytes
    windows = np.random.default_rng(3).integers(0, 64, (2, 20))
    for chunk in (1, 7):
        got = lms["compressed"].score(windows, chunk=chunk)
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got, lms["compressed-rebuilt"].score(windows, chunk=chunk), rtol=1e-5, atol=1e-5)


def test_a_kv_cache_folder_provides_calibration(tmp_path):
    """genzip-compile FOLDER --kv-cache --passes cskv passes the needs check before loading:
    the folder's export brings prefill windows (frontend.calibration.kv_cache_calibration)."""
    from genzip.compile import _provided
    from genzip.frontend.calibration import kv_cache_calibration
    from genzip.passes.infra.context import CALIBRATION, check_needs

    assert CALIBRATION in _provided("folder", str(tmp_path), None, kv_cache=True)
    assert CALIBRATION not in _provided("folder", str(tmp_path), None, kv_cache=False)
    check_needs(build_pipeline("cskv").passes, _provided("folder", str(tmp_path), None, True), "a folder")
    cache = {"layers": 1, "kv_heads": 2, "head_dim": 4, "vocab_size": 50, "max_positions": 32}
    samples = kv_cache_calibration(tmp_path, seed=0, cache=cache)()
    assert len(samples) == 8 and samples[0]["input_ids"].shape == (1, 32)
    assert samples[0]["past_key_values.0.value"].shape == (1, 2, 0, 4)
