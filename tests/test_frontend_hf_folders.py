"""Local Hugging Face folders (safetensors, no hub) load, export and match eager."""

from __future__ import annotations

import json

import pytest
import torch

from genzip.errors import GenzipError
from genzip.frontend import load_model


def _attention_count(sm) -> int:
    return sum(n.op_type == "Attention" for n in sm.model.graph)


def test_diffusers_pixart_folder(tmp_path):
    import diffusers

    torch.manual_seed(0)
    model = diffusers.PixArtTransformer2DModel(
        num_layers=1, num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
        patch_size=2, sample_size=8, cross_attention_dim=16, caption_channels=12,
        norm_type="ada_norm_single", use_additional_conditions=False,
    )
    model.save_pretrained(tmp_path, safe_serialization=True)
    sm = load_model(str(tmp_path))
    assert sm.kind == "diffusers" and sm.info["family"] == "dit"
    assert [v.name for v in sm.model.graph.inputs] == ["hidden_states", "timestep", "encoder_hidden_states", "encoder_attention_mask"]
    assert sm.example_inputs["hidden_states"].shape == (2, 4, 8, 8)
    assert sm.example_inputs["encoder_hidden_states"].shape[::2] == (2, 12)  # caption_channels
    assert _attention_count(sm) == 2 and sm.fidelity["cosine"] > 0.999


def test_diffusers_pipeline_folder_uses_denoiser(tmp_path):
    import diffusers

    from genzip.compile import CompileOptions, compile_source
    from genzip.runtime.model import PlannedModel
    from genzip.runtime.sampler import scheduler_for

    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=2, norm_num_groups=4,
    )
    unet.save_pretrained(tmp_path / "unet", safe_serialization=True)
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_end=0.012).save_pretrained(tmp_path / "scheduler")
    sm = load_model(str(tmp_path), batch=1)
    assert sm.info["family"] == "unet" and list(sm.example_inputs) == ["sample", "timestep", "encoder_hidden_states",
                                                                       "encoder_attention_mask"]
    assert sm.fidelity["cosine"] > 0.999
    # The pipeline's scheduler config ships in the artifact, and the sampler takes it.
    out = tmp_path / "artifact"
    manifest = compile_source(sm, str(out), CompileOptions(target="onnx"))
    assert manifest["source_info"]["scheduler_config"] == "scheduler/scheduler_config.json"
    assert "scheduler/scheduler_config.json" in manifest["files"]
    sched, what = scheduler_for(PlannedModel(str(out)))
    assert type(sched).__name__ == "DDIMScheduler" and sched.config.beta_end == 0.012
    assert what == "DDIMScheduler (the model's scheduler_config.json)"


def test_transformers_llama_folder(tmp_path):
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path, safe_serialization=True)
    sm = load_model(str(tmp_path))
    assert sm.kind == "transformers" and sm.info["family"] == "llm"
    assert [v.name for v in sm.model.graph.outputs] == ["logits"]
    assert sm.example_inputs["input_ids"].shape == (1, 32)
    assert _attention_count(sm) == 1 and sm.fidelity["cosine"] > 0.999


def test_folder_errors(tmp_path):
    with pytest.raises(GenzipError, match="no config.json"):
        load_model(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "PixArtTransformer2DModl"}))
    with pytest.raises(GenzipError, match="did you mean: PixArtTransformer2DModel"):
        load_model(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "PixArtTransformer2DModel"}))
    with pytest.raises(GenzipError, match="could not load"):  # no safetensors weights
        load_model(str(tmp_path))


def test_mixtral_folder_exports_with_top_k_experts(tmp_path):
    import transformers

    from genzip.frontend.hf_folder import exportable_experts

    config = transformers.MixtralConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=64,
        sliding_window=None,
    )
    torch.manual_seed(0)
    model = transformers.MixtralForCausalLM(config).eval()
    model.save_pretrained(tmp_path, safe_serialization=True)
    ids = torch.randint(0, 64, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        default = model(input_ids=ids).logits
        assert exportable_experts(model)
        batched = model(input_ids=ids).logits
    torch.testing.assert_close(batched, default, rtol=1e-5, atol=1e-6)  # the same function
    assert not exportable_experts(transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)))
    sm = load_model(str(tmp_path))
    assert sm.info["class"] == "MixtralForCausalLM" and sm.fidelity["cosine"] > 0.999
    assert _attention_count(sm) == 1
