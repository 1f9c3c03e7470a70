"""share-attn: structure, exactness of every mode in ORT, negatives, spec handling."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
from helpers_onnx import proto_bytes
from share_artifacts import compiled

from genzip.errors import GenzipError
from genzip.ort_session import session_options
from genzip.passes import build_pipeline, run_pipeline
from genzip.passes.attention._canonical import canonical_attention_node
from genzip.passes.infra.contract import FACTS_KEY
from genzip.runtime import plan as P


@pytest.fixture(scope="module")
def arts(tmp_path_factory, pixart_ort):
    return compiled(tmp_path_factory), pixart_ort[0]


def _session(folder):
    opts = session_options()
    return ort.InferenceSession(os.path.join(folder, "model.onnx"), opts, providers=["CPUExecutionProvider"])


def _run(sess, feeds):
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def _layout(folder):
    with open(os.path.join(folder, "genzip.json")) as f:
        manifest = json.load(f)
    (rec,) = [r for r in manifest["pass_stats"] if r["pass"].startswith("share-attn")]
    return manifest, rec["stats"]


def _weights(model) -> list[tuple[str, int]]:
    """(name, bytes) of every initializer of >= 1024 elements in the model and all its subgraphs."""
    graphs = [model.graph] + [a.value for n in ir.traversal.RecursiveGraphIterator(model.graph)
                              for a in n.attributes.values() if a.type == ir.AttributeType.GRAPH]
    return sorted((v.name, v.const_value.nbytes) for g in graphs for v in g.initializers.values()
                  if v.const_value.size >= 1024)


def test_structure_and_manifest(arts):
    share, _ = arts
    manifest, stats = _layout(share)
    assert stats["layers"] == 2 and stats["window"] == 32
    assert stats["attn_flops_window"] < stats["attn_flops_full"]
    lay = stats["layout"]
    assert lay["cfg_order"] == ["uncond", "cond"] and lay["modes_input"] == "attn_modes"
    assert [entry["attn_index"] for entry in lay["layers"]] == [0, 2]  # self-attention only
    # The plain inputs are unchanged (the cache inputs have defaults); cache outputs were added.
    assert [s["name"] for s in manifest["inputs"]] == ["hidden_states", "timestep", "encoder_hidden_states", "encoder_attention_mask"]
    assert {s["name"] for s in manifest["outputs"]} >= {"attn_block_out.0", "attn_residual_out.1"}
    model = ir.load(os.path.join(share, "model.onnx"))
    top = [n.op_type for n in model.graph]
    assert top.count("If") == 2 and top.count("Attention") == 2  # the two cross-attentions stay outside
    # No weight copies: the block's weights moved into its one compute branch, so the
    # artifact holds exactly the weights of the artifact without share-attn.
    assert _weights(model) == _weights(ir.load(os.path.join(arts[1], "model.onnx")))
    assert json.loads(model.metadata_props["genzip.share_attn"])["window"] == 32


def test_all_full_equals_artifact_without_share_attn(arts):
    share, base = arts
    feeds = dict(np.load(os.path.join(base, "inputs.npz")))
    ref = _run(_session(base), feeds)["output"]
    out = _run(_session(share), feeds)
    np.testing.assert_array_equal(out["output"], ref)
    full = _run(_session(share), {**feeds, "attn_modes": np.array([1, 1])})  # full + residual refresh
    np.testing.assert_array_equal(full["output"], ref)
    assert full["attn_residual_out.0"].shape == (2, 4, 256, 16)


def test_share_step_returns_previous_output_bit_exactly(arts):
    share, _ = arts
    sess = _session(share)
    feeds = dict(np.load(os.path.join(share, "inputs.npz")))
    prev = _run(sess, feeds)
    later = {**feeds, "hidden_states": feeds["hidden_states"] * 0.5, "timestep": feeds["timestep"] + 3}
    cached = {"attn_modes": np.array([3, 3]),
              "attn_block_in.0": prev["attn_block_out.0"], "attn_block_in.1": prev["attn_block_out.1"]}
    out = _run(sess, {**later, **cached})
    for i in (0, 1):
        np.testing.assert_array_equal(out[f"attn_block_out.{i}"], prev[f"attn_block_out.{i}"])
    # Only layer 1 shared: layer 0 computes afresh on the new input.
    out1 = _run(sess, {**later, **cached, "attn_modes": np.array([0, 3])})
    assert not np.array_equal(out1["attn_block_out.0"], prev["attn_block_out.0"])
    np.testing.assert_array_equal(out1["attn_block_out.1"], prev["attn_block_out.1"])


def test_share_cfg_with_identical_halves_equals_full(arts):
    share, _ = arts
    sess = _session(share)
    feeds = dict(np.load(os.path.join(share, "inputs.npz")))
    same = {k: np.concatenate([v[1:], v[1:]]) for k, v in feeds.items()}  # uncond half = cond half
    full = _run(sess, same)
    asc = _run(sess, {**same, "attn_modes": np.array([4, 4])})
    np.testing.assert_array_equal(asc["output"], full["output"])
    # WA-RS + ASC with the residual of the same inputs also reproduces full attention.
    refresh = _run(sess, {**same, "attn_modes": np.array([1, 1])})
    res = {f"attn_residual_in.{i}": refresh[f"attn_residual_out.{i}"] for i in (0, 1)}
    wcfg = _run(sess, {**same, **res, "attn_modes": np.array([5, 5])})
    np.testing.assert_allclose(wcfg["output"], full["output"], rtol=0, atol=1e-5)


def test_share_cfg_refresh_gives_the_conditional_halfs_residual_on_both_halves(arts):
    """Mode 6 (ASC full step that refreshes, DiTFastAttn's reference rule): output as mode 4,
    residual = full - window of the conditional half, copied over the batch."""
    share, _ = arts
    sess = _session(share)
    feeds = dict(np.load(os.path.join(share, "inputs.npz")))
    asc = _run(sess, {**feeds, "attn_modes": np.array([4, 4])})
    asc_refresh = _run(sess, {**feeds, "attn_modes": np.array([6, 6])})
    np.testing.assert_array_equal(asc_refresh["output"], asc["output"])
    cond = {k: np.concatenate([v[1:], v[1:]]) for k, v in feeds.items()}
    cond_refresh = _run(sess, {**cond, "attn_modes": np.array([1, 1])})
    for i in (0, 1):
        r = asc_refresh[f"attn_residual_out.{i}"]
        assert r.shape == (2, 4, 256, 16) and np.abs(r).max() > 0
        np.testing.assert_array_equal(r[0], r[1])
        np.testing.assert_allclose(r, cond_refresh[f"attn_residual_out.{i}"], rtol=0, atol=1e-6)


def test_window_residual_with_unchanged_qkv_equals_full(arts):
    share, _ = arts
    sess = _session(share)
    feeds = dict(np.load(os.path.join(share, "inputs.npz")))
    refresh = _run(sess, {**feeds, "attn_modes": np.array([1, 1])})
    res = {f"attn_residual_in.{i}": refresh[f"attn_residual_out.{i}"] for i in (0, 1)}
    wars = _run(sess, {**feeds, **res, "attn_modes": np.array([2, 2])})
    # window + (full - window) = full up to one float rounding per element
    np.testing.assert_allclose(wars["output"], refresh["output"], rtol=0, atol=1e-5)
    for i in (0, 1):
        np.testing.assert_allclose(wars[f"attn_block_out.{i}"], refresh[f"attn_block_out.{i}"], rtol=0, atol=1e-5)


def test_modes_match_plan_constants():
    assert (P.MODE_FULL, P.MODE_FULL_RESIDUAL, P.MODE_WINDOW, P.MODE_SHARE_STEP,
            P.MODE_FULL_CFG, P.MODE_WINDOW_CFG, P.MODE_FULL_CFG_RESIDUAL) == (0, 1, 2, 3, 4, 5, 6)


def _bare_attention_model():
    """Canonical self-attention without projections: no block to share."""
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([1, 2, 16, 8]))
    node = canonical_attention_node(x, x, x, scale=8**-0.5, index=0)
    node.outputs[0].name = "y"
    graph = ir.Graph([x], [node.outputs[0]], nodes=[node], opset_imports={"": 23}, name="g")
    model = ir.Model(graph, ir_version=10)
    model.metadata_props[FACTS_KEY] = "attention-canonical"
    return model


def test_negative_no_block_is_unmodified():
    model = _bare_attention_model()
    before = proto_bytes(model)
    with pytest.raises(GenzipError, match="share-attn' was asked for but changed nothing: .*no-shared-projection"):
        run_pipeline(model, build_pipeline("share-attn", initial_facts=frozenset({"attention-canonical"})))
    (record,) = run_pipeline(model, build_pipeline("share-attn{allow-noop=true}",
                                                   initial_facts=frozenset({"attention-canonical"})))
    assert record.modified is False
    assert proto_bytes(model) == before  # only the facts record differs


def test_spec_round_trip_and_precondition():
    spec = "canonicalize-attn,share-attn{tokens=32 layers=0,2}"
    assert str(build_pipeline(spec)) == spec
    with pytest.raises(GenzipError, match="canonicalize-attn"):
        build_pipeline("share-attn")
    with pytest.raises(GenzipError, match="exactly one"):
        build_pipeline("canonicalize-attn,share-attn{tokens=4 window=0.5}")


def test_full_only_refresh_rule_keeps_the_older_residual(arts):
    """PlannedModel(refresh="full-only") replays genzip's pre-issue-16 rule: the full+share-cfg
    step leaves the step-0 residual in the cache, so the WA-RS step after it reads that one."""
    from genzip.runtime.model import PlannedModel

    share, _ = arts
    feeds = dict(np.load(os.path.join(share, "inputs.npz")))
    later = {**feeds, "hidden_states": feeds["hidden_states"] * 0.5 + 0.3}
    plan = P.Plan(3, 2, 0, (("full", "full+share-cfg", "window-residual"),) * 2)
    residuals = {}
    for rule in (P.REFRESH_FULL_ATTENTION, P.REFRESH_FULL_ONLY):
        model = PlannedModel(share, plan, refresh=rule)
        model.call(feeds, 0, cfg_pair=True, identity="x")
        step0 = dict(model.caches.slot("x").residual)
        model.call(later, 1, cfg_pair=True, identity="x")
        residuals[rule] = (step0, dict(model.caches.slot("x").residual), model.call(later, 2, cfg_pair=True,
                                                                                     identity="x"))
    old0, old1, old_out = residuals[P.REFRESH_FULL_ONLY]
    new0, new1, new_out = residuals[P.REFRESH_FULL_ATTENTION]
    for i in (0, 1):
        np.testing.assert_array_equal(old1[i], old0[i])  # the ASC step did not refresh it
        assert i not in new0  # the reference's rule: step 0's residual is never read, so never kept
        assert not np.allclose(new1[i], old0[i])  # the ASC step's, from the later input
    assert not np.allclose(old_out, new_out)


@pytest.fixture(scope="module")
def sd3_shared():
    """An SD3-style block (joint attention + attn2) at a CFG batch of 2 with identical halves,
    before and after canonicalize-attn,share-attn."""
    import torch
    from arch_models import BUILDERS

    from genzip.frontend.from_torch import source_from_torch
    from genzip.passes.attention.canonicalize_attn import CanonicalizeAttentionPass
    from genzip.passes.attention.share_attn import ShareAttentionOptions, ShareAttentionPass

    module, kwargs = BUILDERS["sd3"]()
    kwargs = {k: torch.cat([v, v]) if torch.is_tensor(v) else v for k, v in kwargs.items()}
    # A dynamic batch, as genzip exports denoisers: ASC runs the block on half of it.
    model = source_from_torch(module, ((), kwargs), source="sd3", kind="callable", output_names=["output"]).model
    CanonicalizeAttentionPass().run(model, None)
    before = ir.to_proto(model).SerializeToString()
    result = ShareAttentionPass(ShareAttentionOptions()).run(model, None)
    feeds = {k: v.numpy() for k, v in kwargs.items() if torch.is_tensor(v)}
    return before, model, result, feeds


def test_joint_attention_shares_as_an_attention_only_block(sd3_shared):
    """SD3's joint attention projects image and text apart, so its block is the Attention node
    alone: every mode still computes what the model computes."""
    before, model, result, feeds = sd3_shared
    assert (result.stats["layers"], result.stats["attention_only"]) == (2, 1)
    session = ort.InferenceSession(ir.to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"])
    reference = ort.InferenceSession(before, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    caches = {i.name: np.zeros([d if isinstance(d, int) else 2 for d in i.shape], np.float32)
              for i in session.get_inputs() if i.name.startswith(("attn_block_in", "attn_residual_in"))}
    names = [o.name for o in session.get_outputs()]

    def run(mode, given=None):
        out = session.run(None, {**feeds, **caches, **(given or {}), "attn_modes": np.full(2, mode, np.int64)})
        return dict(zip(names, out))

    full = run(P.MODE_FULL)
    np.testing.assert_allclose(full["output"], reference, rtol=1e-5, atol=1e-5)
    # ASC with identical halves computes one half and copies it: the same output.
    np.testing.assert_allclose(run(P.MODE_FULL_CFG)["output"], reference, rtol=1e-5, atol=1e-5)
    # AST reuses the previous step's block outputs: fed the full step's, the same output.
    previous = {n.replace("_out.", "_in."): v for n, v in full.items() if n.startswith("attn_block_out")}
    assert len(previous) == 2
    np.testing.assert_allclose(run(P.MODE_SHARE_STEP, previous)["output"], reference, rtol=1e-5, atol=1e-5)
