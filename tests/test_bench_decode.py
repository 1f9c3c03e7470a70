"""``python benchmarks/bench_decode.py --json`` on a tiny random Llama: every engine runs,
a missing peer is skipped with its reason, and bad flags exit 2 in one line."""

from __future__ import annotations

import importlib.util
import json

import bench_scripts


def test_bench_decode_json():
    rc, out, err = bench_scripts.run(
        "bench_decode.py", "--contexts", "24,40", "--new-tokens", "4", "--rounds", "1", "--hidden", "64",
        "--layers", "1", "--heads", "4", "--kv-heads", "2", "--intermediate", "128", "--prefill-chunk", "16",
        "--variants", "fp32,fp32-gqa,kv8,moa-0.25,moa-0.25-spread+kv8,cskv25", "--ppl-contexts", "none", "--json",
        "--quiet")
    assert rc == 0, err[-2000:]
    result = json.loads(out)
    engines = {r["engine"] for r in result["speed"]}
    expected = {"genzip-fp32", "genzip-fp32-gqa", "genzip-kv8", "genzip-moa-0.25", "genzip-moa-0.25-spread+kv8",
                "genzip-cskv25", "transformers"}
    if importlib.util.find_spec("onnxruntime_genai") is None:
        assert "not installed" in result["skipped"]["ort-genai"]
    else:
        # kv8's int8, MoA's evicting and cskv's low-rank caches: no genai_config
        expected |= {"ort-genai", "genzip-fp32@ort-genai", "genzip-fp32-gqa@ort-genai"}
    assert engines == expected
    rows = {(r["engine"], r["context"]): r for r in result["speed"]}
    # ort-gqa: one shared buffer, the size of one side of fp32's ping-pong; in onnxruntime-genai
    # one buffer instead of past + present.
    assert rows[("genzip-fp32-gqa", 40)]["kv_bytes"] == rows[("genzip-fp32", 40)]["kv_bytes"]
    if "ort-genai" in engines:
        assert rows[("genzip-fp32-gqa@ort-genai", 40)]["kv_bytes"] * 2 == rows[("genzip-fp32@ort-genai", 40)]["kv_bytes"]
    for row in rows.values():
        assert row["tokens_per_s"] > 0 and len(row["rounds"]) == 1 and row["kv_bytes"] > 0
    # The int8 cache: head_dim 16 -> 16 + 4 bytes per head and token instead of 64.
    assert rows[("genzip-kv8", 40)]["kv_bytes"] * 64 == rows[("genzip-fp32", 40)]["kv_bytes"] * 20
    # MoA 0.25 compiled for 44 tokens keeps 4 sinks + round(0.25·44) = 15 of the 44 per layer.
    assert rows[("genzip-moa-0.25", 40)]["kv_bytes"] * 44 == rows[("genzip-fp32", 40)]["kv_bytes"] * 15
    # Spread per KV head (beta 0.25·0.25, 0.25·1.75 -> spans clamp(3) = 4 sinks, 19): 4 + 4 and
    # 4 + 19 tokens, each KV head its own, as int8 rows (16 bytes) plus a float32 scale.
    assert rows[("genzip-moa-0.25-spread+kv8", 40)]["kv_bytes"] * 64 * 2 * 44 == \
        rows[("genzip-fp32", 40)]["kv_bytes"] * 20 * 31
    # cskv{ratio=0.25 window=16 int8}, 44 tokens (40 + 4 new): width 2 x 16 -> 8 int8 features
    # + 2 scales per token, plus 16 window rows of 2 x 16 floats; fp32: 44 x 32 floats.
    per_kv = 44 * (8 + 2 * 4) + 16 * 2 * 16 * 4
    assert rows[("genzip-cskv25", 40)]["kv_bytes"] * 44 * 32 * 4 == rows[("genzip-fp32", 40)]["kv_bytes"] * per_kv
    assert rows[("genzip-fp32", 24)]["vs_genzip_fp32"] == 1.0
    assert len(result["loadavg_before"]) == 3


def test_bench_decode_bad_flags_exit_2():
    for argv, words in [(["--contexts", "512,x"], "not a comma-separated list"),
                        (["--variants", "fp32,int3"], "unknown variants"),
                        (["--new-tokens", "1"], "no decode step")]:
        rc, _, err = bench_scripts.run("bench_decode.py", *argv)
        assert rc == 2 and err.count("\n") == 1 and words in err, err
