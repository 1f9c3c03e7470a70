"""Tiny transformers causal-LM folders (Llama, Qwen2, Mistral) with a word-level tokenizer, built
offline from configs and saved with ``save_pretrained`` (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

TEXT = (
    "the quick brown fox jumps over the lazy dog . a small model writes short text . "
    "genzip compiles models and runs them fast . every token has a key and a value ."
)
SPECIALS = ["<unk>", "<s>", "</s>"]


def _tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted(set(TEXT.split()))
    vocab = {w: i for i, w in enumerate(SPECIALS + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def make_folder(root: Path, arch: str = "llama", seed: int = 0) -> Path:
    """Save a 2-layer GQA model (4 query heads, 2 KV heads) and its tokenizer under ``root/arch``."""
    import torch
    import transformers

    tokenizer = _tokenizer()
    common = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=48,
                  bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    if arch in ("mistral", "mixtral"):
        common["sliding_window"] = None  # full attention: the cache holds every token
    if arch == "mixtral":  # mixture of experts: 4 experts, top-2
        common.update(num_local_experts=4, num_experts_per_tok=2)
    if arch == "qwen2-moe":  # 4 routed experts, top-2 (not renormalized), plus a gated shared expert
        common.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                      shared_expert_intermediate_size=48, decoder_sparse_step=1, norm_topk_prob=False)
    if arch == "qwen3-moe":  # 4 routed experts, top-2 renormalized, q/k norms, no shared expert
        common.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=1,
                      norm_topk_prob=True, mlp_only_layers=[], head_dim=8)
    config = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config,
              "mistral": transformers.MistralConfig, "mixtral": transformers.MixtralConfig,
              "qwen2-moe": transformers.Qwen2MoeConfig, "qwen3-moe": transformers.Qwen3MoeConfig}[arch](**common)
    cls = {"llama": transformers.LlamaForCausalLM, "qwen2": transformers.Qwen2ForCausalLM,
           "mistral": transformers.MistralForCausalLM, "mixtral": transformers.MixtralForCausalLM,
           "qwen2-moe": transformers.Qwen2MoeForCausalLM, "qwen3-moe": transformers.Qwen3MoeForCausalLM}[arch]
    torch.manual_seed(seed)
    model = cls(config).eval()
    with torch.no_grad():  # larger weights than the init, so greedy decoding varies its tokens
        for p in model.parameters():
            p.mul_(4.0) if p.dim() == 2 else None
    folder = Path(root) / arch
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def compile_kv_artifact(root: Path, arch: str = "llama", passes: str = "",
                        min_cosine: float | None = None) -> tuple[Path, Path]:
    """(HF folder, ``--kv-cache`` artifact of target onnx) under ``root``."""
    import torch

    from genzip.compile import CompileOptions, compile_model

    torch.set_num_threads(2)
    folder = make_folder(root, arch)
    out = Path(root) / f"{arch}.kv"
    extra = {} if min_cosine is None else {"min_cosine": min_cosine}
    compile_model(str(folder), str(out), CompileOptions(target="onnx", passes=passes, kv_cache=True, **extra))
    return folder, out


def one_layer_llama():
    """A seeded 1-layer GQA Llama (vocab 64, hidden 16, 2 heads / 1 KV head), no tokenizer."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    return transformers.LlamaForCausalLM(config)


def one_layer_llama_folder(path) -> str:
    """``one_layer_llama`` saved as a transformers folder at ``path``."""
    one_layer_llama().save_pretrained(path, safe_serialization=True)
    return str(path)


def genai_greedy(og, model_or_folder, ids, new_tokens: int):
    """Greedy ``[1, len(ids) + new_tokens]`` token ids from onnxruntime-genai's own C++ loop
    (``og`` is the imported ``onnxruntime_genai``) over an artifact folder or an ``og.Model``."""
    import numpy as np

    model = og.Model(str(model_or_folder)) if isinstance(model_or_folder, (str, Path)) else model_or_folder
    ids = np.asarray(ids, np.int64).reshape(-1)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + new_tokens, min_length=len(ids) + new_tokens, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(ids.astype(np.int32))
    while not gen.is_done():
        gen.generate_next_token()
    return np.asarray(gen.get_sequence(0), np.int64)[None]
