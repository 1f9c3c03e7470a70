"""Tiny real architectures (random weights, built from configs, nothing downloaded) for the
attention-matrix tests.

Each builder returns ``(module, kwargs)``: an eval-mode ``nn.Module`` seeded with
``torch.manual_seed(0)`` and one keyword call. ``export_dynamo`` exports through genzip's
own frontend (``source_from_torch``, static shapes: one export, verified against eager),
``export_torchscript`` through ``torch.onnx.export(..., dynamo=False)``.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import onnx
import onnx_ir as ir
import torch

SEQ = 16
VOCAB = 128
BATCH = 1


def _ids(n: int = SEQ, batch: int = BATCH, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, n), generator=torch.Generator().manual_seed(seed))


def _lm(config_cls: str, model_cls: str, padding: bool = False, attn: str = "sdpa", **config):
    import transformers

    cfg = getattr(transformers, config_cls)(**config, attn_implementation=attn)
    torch.manual_seed(0)
    module = getattr(transformers, model_cls)(cfg).eval()
    kwargs: dict[str, Any] = {"input_ids": _ids(), "use_cache": False}
    if padding:
        mask = torch.ones(BATCH, SEQ, dtype=torch.int64)
        mask[:, :3] = 0  # left padding
        kwargs["attention_mask"] = mask
    return module, kwargs


_GQA = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
_GQA1 = {**_GQA, "num_hidden_layers": 1}  # one layer where two add nothing but export time


def llama(padding: bool = False):
    return _lm("LlamaConfig", "LlamaForCausalLM", padding, **_GQA)


def llama_padded():
    return llama(padding=True)


def llama_eager_padded():
    """Eager attention (a MatMul/Softmax chain) with an all-ones attention_mask input: the form
    TorchScript can export (without attention_mask, transformers' mask code calls aten::diff)."""
    return _lm("LlamaConfig", "LlamaForCausalLM", padding=True, attn="eager", **_GQA)


def qwen2():
    return _lm("Qwen2Config", "Qwen2ForCausalLM", **_GQA)


def mistral():
    return _lm("MistralConfig", "MistralForCausalLM", **_GQA1, sliding_window=None)


def gemma():
    return _lm("GemmaConfig", "GemmaForCausalLM", **_GQA1, head_dim=8)


def phi():
    return _lm("PhiConfig", "PhiForCausalLM", vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
               num_hidden_layers=1, num_attention_heads=4, max_position_embeddings=64)


def gpt2():
    return _lm("GPT2Config", "GPT2LMHeadModel", vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64)


def gpt_neox():
    return _lm("GPTNeoXConfig", "GPTNeoXForCausalLM", vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
               num_hidden_layers=1, num_attention_heads=4, max_position_embeddings=64)


def mixtral():
    module, kwargs = _lm("MixtralConfig", "MixtralForCausalLM", **_GQA1, num_local_experts=2, num_experts_per_tok=1,
                         sliding_window=None)
    # transformers' default expert loop is data-dependent (torch.export cannot trace it);
    # batched_mm gathers each token's top-k experts and exports (genzip's frontend does the same).
    module.set_experts_implementation("batched_mm")
    return module, kwargs


def _seq2seq(config_cls: str, model_cls: str, **config):
    import transformers

    cfg = getattr(transformers, config_cls)(**config)
    torch.manual_seed(0)
    module = getattr(transformers, model_cls)(cfg).eval()
    kwargs = {"input_ids": _ids(12), "decoder_input_ids": _ids(8, seed=1), "use_cache": False}
    return module, kwargs


def t5():
    return _seq2seq("T5Config", "T5ForConditionalGeneration", vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64,
                    num_layers=1, num_decoder_layers=1, num_heads=4, decoder_start_token_id=0)


def bart():
    return _seq2seq("BartConfig", "BartForConditionalGeneration", vocab_size=VOCAB, d_model=32, encoder_layers=1,
                    decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                    decoder_ffn_dim=64, max_position_embeddings=64, attn_implementation="sdpa")


def _diffusers(cls: str, text_len: int = 8, **config):
    import diffusers

    from genzip.frontend import hf_inputs

    torch.manual_seed(0)
    module = getattr(diffusers, cls)(**config).eval()
    _, kwargs = hf_inputs.diffusers_call(module, batch=BATCH, seed=0, text_len=text_len)
    return module, kwargs


def pixart():
    return _diffusers("PixArtTransformer2DModel", num_layers=2, num_attention_heads=2, attention_head_dim=16,
                      in_channels=4, out_channels=8, patch_size=2, sample_size=8, cross_attention_dim=32,
                      caption_channels=32, norm_type="ada_norm_single", use_additional_conditions=False)


def dit():
    return _diffusers("DiTTransformer2DModel", num_layers=2, num_attention_heads=2, attention_head_dim=16,
                      in_channels=4, out_channels=8, patch_size=2, sample_size=8, num_embeds_ada_norm=1000,
                      norm_type="ada_norm_zero")


def sd3():
    return _diffusers("SD3Transformer2DModel", sample_size=8, patch_size=2, in_channels=4, num_layers=1,
                      attention_head_dim=8, num_attention_heads=4, joint_attention_dim=32,
                      caption_projection_dim=32, pooled_projection_dim=32, out_channels=4, pos_embed_max_size=8,
                      dual_attention_layers=(0,))  # SD3.5: joint "attn" plus a second self attention "attn2"


def unet():
    return _diffusers("UNet2DConditionModel", sample_size=8, in_channels=4, out_channels=4,
                      block_out_channels=(32, 32), layers_per_block=1, norm_num_groups=8,
                      down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                      up_block_types=("UpBlock2D", "UpBlock2D"),  # attention: down block 0 and mid block
                      cross_attention_dim=32, attention_head_dim=8)


def flux():
    import diffusers

    torch.manual_seed(0)
    module = diffusers.FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                                              attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32,
                                              pooled_projection_dim=32, axes_dims_rope=(2, 2, 4)).eval()
    g = torch.Generator().manual_seed(0)
    img, txt = 16, 8
    kwargs = {
        "hidden_states": torch.randn(BATCH, img, 4, generator=g),
        "encoder_hidden_states": torch.randn(BATCH, txt, 32, generator=g),
        "pooled_projections": torch.randn(BATCH, 32, generator=g),
        "timestep": torch.tensor([0.5] * BATCH),
        "img_ids": torch.zeros(img, 3),
        "txt_ids": torch.zeros(txt, 3),
        "return_dict": False,
    }
    return module, kwargs


BUILDERS: dict[str, Callable[[], tuple[torch.nn.Module, dict]]] = {
    "llama": llama, "llama-padded": llama_padded, "llama-eager-padded": llama_eager_padded, "qwen2": qwen2, "mistral": mistral, "gemma": gemma,
    "phi": phi, "gpt2": gpt2, "gpt-neox": gpt_neox, "mixtral": mixtral, "t5": t5, "bart": bart,
    "pixart": pixart, "dit": dit, "sd3": sd3, "unet": unet, "flux": flux,
}


def export_dynamo(name: str) -> ir.Model:
    """genzip's frontend export (torch.export + dynamo exporter, opset 23), static shapes."""
    from genzip.frontend.from_torch import source_from_torch

    module, kwargs = BUILDERS[name]()
    source = source_from_torch(module, ((), kwargs), source=name, kind="callable", output_names=["output"],
                               dynamic=False)
    return source.model


class _Positional(torch.nn.Module):
    """TorchScript tracing takes positional tensors; the rest of the call is bound here."""

    def __init__(self, module: torch.nn.Module, names: list[str], fixed: dict):
        super().__init__()
        self.module, self.names, self.fixed = module, names, fixed

    def forward(self, *tensors):
        out = self.module(**dict(zip(self.names, tensors)), **self.fixed)
        return out[0] if isinstance(out, (tuple, list)) else out.logits if hasattr(out, "logits") else out


def export_torchscript(name: str, opset: int = 18) -> ir.Model:
    """``torch.onnx.export(..., dynamo=False)`` (attention decomposed into MatMul/Softmax)."""
    module, kwargs = BUILDERS[name]()
    names = [k for k, v in kwargs.items() if isinstance(v, torch.Tensor)]
    fixed = {k: v for k, v in kwargs.items() if not isinstance(v, torch.Tensor)}
    wrapper = _Positional(module, names, fixed).eval()
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(wrapper, tuple(kwargs[n] for n in names), buf, dynamo=False, opset_version=opset,
                          input_names=names, output_names=["output"])
    proto = onnx.load_from_string(buf.getvalue())
    proto = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    return ir.from_proto(proto)
