"""Mixture-of-experts LLMs: KV-cache export and generation, ``expert-prune`` and ``eep-search``."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx_ir as ir
import pytest
import torch
from tiny_llm import compile_kv_artifact

import genzip
from genzip.errors import GenzipError
from genzip.passes.moe import _moe_graph, _plan
from genzip.passes.moe.expert_prune import ExpertPruneOptions, ExpertPrunePass
from genzip.searches import eep, moe_experts
from genzip.tools import genzip_cli

IDS = np.array([[1, 5, 9, 12, 3, 7, 4, 8]], np.int64)


@pytest.fixture(scope="module", params=["mixtral", "qwen2-moe"])
def moe(request, tmp_path_factory):
    """(HF folder, unpruned ``--kv-cache`` artifact, eager model) of a tiny MoE."""
    import transformers

    folder, artifact = compile_kv_artifact(tmp_path_factory.mktemp(request.param), request.param)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return folder, artifact, hf


def _prune(artifact, plan: dict, tmp_path, name="plan"):
    """(pass result, the pruned graph) of ``plan`` applied to the artifact's graph."""
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(plan))
    model = ir.load(str(artifact / "model.onnx"))
    return ExpertPrunePass(ExpertPruneOptions(plan=str(path)))(model), model


def _weights(model: ir.Model) -> dict[str, np.ndarray]:
    return {v.name: v.const_value.numpy() for v in model.graph.initializers.values()}


def _scored(artifact, model: ir.Model, tmp_path) -> np.ndarray:
    """Teacher-forced logits of IDS through ``model`` placed in a copy of the artifact."""
    copy = tmp_path / f"art{len(list(tmp_path.iterdir()))}"
    shutil.copytree(artifact, copy)
    ir.save(model, str(copy / "model.onnx"))
    return genzip.load(str(copy), threads=2).score(IDS, chunk=4)


def test_moe_kv_cache_generates_like_transformers_with_top_k_gathers(moe):
    folder, artifact, hf = moe
    graph = ir.load(str(artifact / "model.onnx"))
    layers = _moe_graph.moe_layers(graph)
    # Dispatch form: every layer gathers its tokens' top-2 experts' weights, no dense all-expert pass.
    assert len(layers) == 2 and all(la.num_experts == 4 and la.top_k == 2 and len(la.stacks) == 2 for la in layers)
    with torch.no_grad():
        want = hf.generate(torch.from_numpy(IDS), attention_mask=torch.ones_like(torch.from_numpy(IDS)),
                           max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0).numpy()
    got = genzip.load(str(artifact), threads=2).generate(IDS, max_new_tokens=6, eos_token_id=[])
    np.testing.assert_array_equal(got.sequences, want)


def test_qwen3_moe_exports_generates_and_prunes(tmp_path):
    """Qwen3-MoE (renormalized top-2, q/k norms): the same dispatch form, greedy equal to
    transformers, and expert-prune finds and shrinks its expert layers."""
    import transformers

    folder, artifact = compile_kv_artifact(tmp_path, "qwen3-moe")
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        want = hf.generate(torch.from_numpy(IDS), attention_mask=torch.ones_like(torch.from_numpy(IDS)),
                           max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0).numpy()
    np.testing.assert_array_equal(genzip.load(str(artifact), threads=2).generate(
        IDS, max_new_tokens=6, eos_token_id=[]).sequences, want)
    layers = _moe_graph.moe_layers(ir.load(str(artifact / "model.onnx")))
    assert len(layers) == 2 and all(la.num_experts == 4 and la.top_k == 2 for la in layers)
    result, _ = _prune(artifact, {"layers": {"0": {"keep": [0, 2]}, "1": {"keep": [1, 2, 3]}}}, tmp_path)
    assert result.modified and result.stats["experts_after"] == 5


def test_keep_all_plan_is_bit_identical(moe, tmp_path):
    _, artifact, _ = moe
    before = _weights(ir.load(str(artifact / "model.onnx")))
    plan = {"layers": {"0": {"keep": [0, 1, 2, 3], "merge": {"2": {"2": 1.0}}}, "1": {"keep": [0, 1, 2, 3]}}}
    result, model = _prune(artifact, plan, tmp_path)
    assert not result.modified and result.stats["experts_after"] == 8
    after = _weights(model)
    assert before.keys() == after.keys()
    assert all(np.array_equal(before[k], after[k]) and before[k].dtype == after[k].dtype for k in before)


def test_prune_and_merge_match_eager_and_shrink(moe, tmp_path):
    _, artifact, hf = moe
    plain = {"layers": {"0": {"keep": [2, 0]}, "1": {"keep": [1, 3, 0]}}}
    zero = {"layers": {"0": {"keep": [2, 0], "merge": {"0": {"1": 0.0, "3": 0.0}}}, "1": {"keep": [1, 3, 0]}}}
    merged = {"layers": {"0": {"keep": [2, 0], "merge": {"0": {"1": 0.4, "0": 0.7}, "2": {"3": -0.2}}},
                         "1": {"keep": [1, 3, 0], "merge": {"3": {"2": 0.5}}}}}
    r_plain, m_plain = _prune(artifact, plain, tmp_path, "plain")
    _, m_zero = _prune(artifact, zero, tmp_path, "zero")
    r_merged, m_merged = _prune(artifact, merged, tmp_path, "merged")
    w_plain, w_zero = _weights(m_plain), _weights(m_zero)
    assert all(np.array_equal(w_plain[k], w_zero[k]) for k in w_plain)  # merge weights of zero = plain pruning
    assert r_plain.stats["experts_after"] == 5 and r_merged.stats["merge_terms"] == 3
    assert r_plain.stats["weight_bytes_removed"] > 0
    full = sum(a.nbytes for a in _weights(ir.load(str(artifact / "model.onnx"))).values())
    assert sum(a.nbytes for a in w_plain.values()) == full - r_plain.stats["weight_bytes_removed"]
    assert [la.num_experts for la in _moe_graph.moe_layers(m_merged)] == [2, 3]
    ids = torch.from_numpy(IDS)
    for plan, model in ((plain, m_plain), (merged, m_merged)):
        with torch.no_grad(), moe_experts.applied(hf, _plan.parse_plan(plan, "plan")):
            want = hf(input_ids=ids).logits.numpy()
        np.testing.assert_allclose(_scored(artifact, model, tmp_path), want, rtol=1e-4, atol=1e-4)
    with torch.no_grad():  # applied() restored the weights
        np.testing.assert_allclose(hf(input_ids=ids).logits.numpy(), _scored(
            artifact, ir.load(str(artifact / "model.onnx")), tmp_path), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("plan", "match"), [
    ({"layers": {"5": {"keep": [0, 1]}}}, "unknown layer 5"),
    ({"layers": {"0": {"keep": [0, 7]}}}, "expert 7 is out of range"),
    ({"layers": {"0": {"keep": [0, 1], "merge": {"2": {"3": 0.5}}}}}, "merge into expert 2, which is pruned"),
    ({"layers": {"0": {"keep": [1]}}}, "keeps 1 experts, fewer than the top-2"),
    ({"layers": {"0": {"keep": [1, 1]}}}, "twice"),
    ({"layers": {"0": {"keep": [0, 1], "merge": {"0": {"2": "x"}}}}}, "finite number"),
    ({"layers": [0]}, "'layers' object"),
    ({"num_experts": 8, "layers": {}}, "for 8 experts"),
])
def test_bad_plans_are_refused(moe, tmp_path, plan, match):
    _, artifact, _ = moe
    with pytest.raises(GenzipError, match=match):
        _prune(artifact, plan, tmp_path)


@pytest.mark.parametrize("moe", ["mixtral"], indirect=True)  # one compile through the pipeline is enough
def test_eep_search_cli_plan_compiles_and_generates(moe, tmp_path, capsys):
    folder, _, _ = moe
    out = tmp_path / "plan.json"
    args = ["eep-search", str(folder), "--keep", "2", "--out", str(out), "--seq", "6", "--population", "3",
            "--generations", "1", "--random", "1", "--quiet", "--json"]
    assert genzip_cli.main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary["heldout"]) >= {"unpruned", "eep", "baseline", "random"}
    assert summary["search"]["evaluations"] <= 3 * 2
    plan = json.loads(out.read_text())
    assert all(len(layer["keep"]) == 2 for layer in plan["layers"].values())
    assert genzip_cli.main(args) == 2 and "exists" in capsys.readouterr().err  # no overwrite without --force
    assert genzip_cli.main([*args[:3], "1", *args[4:], "--force"]) == 2
    assert "outside [2, 4]" in capsys.readouterr().err
    _, pruned = compile_kv_artifact(tmp_path, folder.name, passes=f"expert-prune{{plan={out}}}", min_cosine=0.0)
    assert [la.num_experts for la in _moe_graph.moe_layers(ir.load(str(pruned / "model.onnx")))] == [2, 2]
    assert genzip.load(str(pruned), threads=2).generate(IDS, max_new_tokens=4).sequences.shape == (1, 12)


def test_eep_search_beats_random_on_trained_moe():
    from genzip.frontend.trained import _kjv, _lm
    from genzip.runtime import _eval_data
    from genzip.tools.cmd_eep_search import load_moe

    torch.set_num_threads(2)
    module, tok, _ = load_moe("trained-moe")
    fit = _lm.encode(tok, _kjv.split("train")[:3])[: 2 * 48].view(2, 48)
    held = torch.from_numpy(_eval_data.heldout_token_windows(tok, 64, 2))
    result = eep.search(module, fit, keep=2, population=4, generations=2, seed=3)
    assert result.best_fitness <= result.baseline_fitness and result.evals <= 4 * 3
    again = [eep.search(module, fit, keep=2, population=3, generations=1, seed=5) for _ in range(2)]
    assert again[0].best.key() == again[1].best.key() and again[0].history == again[1].history  # reproducible
    scorer = eep.PlanScorer(module, held)
    rng = np.random.default_rng(0)
    randoms = [scorer.score(eep.random_individual(rng, 4, 4, 2).plan(4, 2)) for _ in range(3)]
    assert scorer.score(result.best.plan(4, 2)) < np.mean(randoms)


def test_unexportable_routing_is_one_line_error_naming_the_module():
    import transformers

    from genzip.frontend import hf_inputs
    from genzip.frontend.torch_export import export_or_fail

    config = transformers.MixtralConfig(vocab_size=32, hidden_size=16, intermediate_size=16, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1, num_local_experts=4,
                                        num_experts_per_tok=2, max_position_embeddings=16)
    torch.manual_seed(0)
    model = transformers.MixtralForCausalLM(config).eval()
    model.set_experts_implementation("eager")  # loops over the experts some token hit: data-dependent
    call = hf_inputs.causal_lm_call(model, batch=1, seed=0, seq_len=8)
    with pytest.raises(GenzipError, match=r"expert routing of 'model\.layers\.0\.mlp\.experts' \(MixtralExperts\)") \
            as err:
        export_or_fail(model, call, dynamic=False, output_names=["logits"], what="tiny mixtral")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("argv", [("bench_eep.py", "--keeps", "0"), ("bench_moe_dispatch.py", "--repeat", "0")])
def test_moe_benchmarks_refuse_bad_flags(argv):
    import bench_scripts

    rc, _, err = bench_scripts.run(*argv)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
