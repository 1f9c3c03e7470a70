"""Execution providers: the --providers / --device syntax, one-line refusals of providers this
onnxruntime lacks, the flags threaded through compile/run/bench/sample/eval/generate and
genzip.load, the diffusers adapter's device/dtype, and CUDA runs where CUDA exists."""

from __future__ import annotations

import json
import os

import numpy as np
import onnxruntime as ort
import pytest
import torch

import genzip
from genzip.backends.ort_backend import artifact_model_path
from genzip.errors import GenzipError
from genzip.providers import CPU, CUDA, parse_providers, resolve_providers
from genzip.tools import compile_cli, genzip_cli

AVAILABLE = ort.get_available_providers()
# A provider ONNX Runtime knows but this build lacks (CUDA on a CPU wheel).
ABSENT = next(p for p in (CUDA, "TensorrtExecutionProvider", "DmlExecutionProvider", "CoreMLExecutionProvider")
              if p not in AVAILABLE)
HAS_CUDA = CUDA in AVAILABLE and torch.cuda.is_available()


def test_spec_syntax_names_options_and_short_names():
    got = parse_providers("CUDAExecutionProvider{device_id=1 arena_extend_strategy=kSameAsRequested},cpu")
    assert got == [(CUDA, {"device_id": "1", "arena_extend_strategy": "kSameAsRequested"}), (CPU, {})]
    assert parse_providers("tensorrt{trt_fp16_enable=1},cuda") == [
        ("TensorrtExecutionProvider", {"trt_fp16_enable": "1"}), (CUDA, {})]
    assert resolve_providers() == ((CPU, {}),) == resolve_providers(device="cpu") == resolve_providers("cpu")
    assert resolve_providers([("CPUExecutionProvider", {"arena_extend_strategy": 1})]) == \
        ((CPU, {"arena_extend_strategy": "1"}),)


@pytest.mark.parametrize("spec, needle", [
    ("cpu{device_id}", "is not key=value"),
    ("cpu,{x=1}", "malformed --providers at column 5"),
    ("CUDAExecutonProvider", "did you mean: CUDAExecutionProvider"),
    ("cpu,cpu", "listed twice"),
    (ABSENT, f"lacks {ABSENT}; it has {', '.join(AVAILABLE)}"),
])
def test_bad_provider_specs_are_one_line_errors(spec, needle):
    with pytest.raises(GenzipError) as err:
        resolve_providers(spec)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_providers_and_device_together_are_refused():
    with pytest.raises(GenzipError, match="both --providers and --device"):
        resolve_providers("cpu", device="cpu")


def _cli(main, capsys, *argv):
    rc = main(list(argv))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.mark.parametrize("argv", [
    ["run", "{art}"], ["bench", "{art}", "--repeat", "1"], ["sample", "{art}", "--steps", "2"],
    ["eval", "{art}", "--samples", "1", "--steps", "2"], ["generate", "{art}", "--input-ids", "1"],
])
def test_every_runner_refuses_an_absent_provider_in_one_line(pixart_ort, capsys, argv):
    argv = [a.replace("{art}", pixart_ort[0]) for a in argv]
    rc, _, err = _cli(genzip_cli.main, capsys, *argv, "--providers", f"{ABSENT},cpu")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and f"lacks {ABSENT}" in err, err


def test_compile_refuses_an_absent_provider_before_loading(tmp_path, capsys):
    out = tmp_path / "a"
    rc, _, err = _cli(compile_cli.main, capsys, "tiny-pixart", "--out", str(out), "--providers", ABSENT)
    assert rc == 2 and f"lacks {ABSENT}" in err and "loading" not in err and not out.exists()


def test_runners_on_explicit_cpu_provider(pixart_ort, capsys):
    folder = pixart_ort[0]
    rc, out, err = _cli(genzip_cli.main, capsys, "run", folder, "--device", "cpu", "--json")
    assert rc == 0 and json.loads(out)["providers"] == [CPU], err
    rc, out, err = _cli(genzip_cli.main, capsys, "bench", folder, "--providers",
                        "CPUExecutionProvider{arena_extend_strategy=kSameAsRequested}", "--repeat", "1", "--json")
    assert rc == 0 and json.loads(out)["providers"] == [CPU], err
    rc, out, err = _cli(genzip_cli.main, capsys, "sample", folder, "--device", "cpu", "--steps", "2", "--json")
    assert rc == 0 and json.loads(out)["providers"] == [CPU], err


def test_load_takes_providers_and_the_adapter_follows_the_latents_dtype(pixart_ort):
    folder, manifest = pixart_ort
    transformer = genzip.load(folder, providers=[("CPUExecutionProvider", {})])
    assert transformer.model.session.get_providers() == [CPU]
    spec = {s["name"]: s["shape"] for s in manifest["inputs"]}
    torch.manual_seed(0)
    latents = torch.randn(*[d if isinstance(d, int) else 1 for d in spec["hidden_states"]])
    text = torch.randn(*[d if isinstance(d, int) else 1 for d in spec["encoder_hidden_states"]])
    t = torch.tensor([500])
    ref = transformer(latents, encoder_hidden_states=text, timestep=t, return_dict=False)[0]
    assert ref.dtype == torch.float32
    for dtype in (torch.float64, torch.bfloat16, torch.float16):
        got = transformer(latents.to(dtype), encoder_hidden_states=text.to(dtype), timestep=t.to(dtype),
                          return_dict=False)[0]
        assert got.dtype == dtype and got.device == latents.device
        assert torch.nn.functional.cosine_similarity(got.float().flatten(), ref.flatten(), dim=0) > 0.999
    with pytest.raises(GenzipError, match=f"lacks {ABSENT}"):
        genzip.load(folder, providers=ABSENT)


def test_a_non_cpu_session_runs_the_portable_model(pixart_ort):
    folder, manifest = pixart_ort
    assert artifact_model_path(folder, manifest)[0].endswith("model.ort.onnx")
    path, why = artifact_model_path(folder, manifest, ((CUDA, {}), (CPU, {})))
    assert path == os.path.join(folder, "model.onnx") and "optimized for the CPU provider" in why


def test_compile_records_the_fidelity_providers(pixart_ort):
    assert pixart_ort[1]["fidelity"]["providers"] == [CPU]


@pytest.mark.gpu
def test_cuda_compile_run_and_adapter_match_cpu(tmp_path, capsys, pixart_ort):
    if not HAS_CUDA:
        pytest.skip(f"needs onnxruntime-gpu and a CUDA GPU (this onnxruntime has {', '.join(AVAILABLE)})")
    out = tmp_path / "cuda"
    rc, _, err = _cli(compile_cli.main, capsys, "tiny-pixart", "--out", str(out), "--device", "cuda",
                      "--passes", "canonicalize-attn,dce", "--quiet")
    assert rc == 0, err
    with open(out / "genzip.json") as f:
        assert json.load(f)["fidelity"]["providers"] == [CUDA, CPU]
    folder = pixart_ort[0]
    feeds = dict(np.load(os.path.join(folder, "inputs.npz")))
    cpu = genzip.load(folder, providers="cpu")
    cuda = genzip.load(folder, providers="CUDAExecutionProvider{device_id=0},CPUExecutionProvider")
    assert cuda.model.session.get_providers()[0] == CUDA
    a, b = cpu.run(feeds), cuda.run(feeds)
    for name in a:
        assert np.dot(a[name].ravel(), b[name].ravel()) / (np.linalg.norm(a[name]) * np.linalg.norm(b[name])) > 0.9999
    latents = torch.from_numpy(feeds["hidden_states"]).cuda().half()
    text = torch.from_numpy(feeds["encoder_hidden_states"]).cuda().half()
    got = cuda(latents, encoder_hidden_states=text, timestep=torch.from_numpy(feeds["timestep"]).cuda(),
               return_dict=False)[0]
    assert got.device.type == "cuda" and got.dtype == torch.float16
