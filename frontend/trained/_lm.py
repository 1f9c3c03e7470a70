"""Tokenizer, model configs, loading and perplexity of the trained causal LMs.

Invariants: one byte-level BPE tokenizer (``VOCAB`` ids, ``<|endoftext|>`` = id 0
is BOS, EOS and padding) serves both trained LMs; every chapter is encoded as
``<|endoftext|>`` + text, so documents never run into each other unmarked.
Perplexity is ``exp(mean next-token NLL)`` over non-overlapping ``SEQ_LEN``-token
windows of the concatenated held-out ids, the first token of a window unscored.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

VOCAB = 1024
SEQ_LEN = 128
EOT = "<|endoftext|>"

_COMMON = dict(
    vocab_size=VOCAB, hidden_size=192, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
    max_position_embeddings=512, tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, pad_token_id=0,
    rms_norm_eps=1e-5,
)
CONFIGS = {
    "trained-llama": ("LlamaForCausalLM", dict(_COMMON, intermediate_size=512)),
    "trained-moe": ("MixtralForCausalLM", dict(_COMMON, intermediate_size=256, num_local_experts=4,
                                                num_experts_per_tok=2, router_aux_loss_coef=0.01)),
}


def train_tokenizer(texts: list[str]):
    """A byte-level BPE ``PreTrainedTokenizerFast`` learned from ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=[EOT], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token=EOT, eos_token=EOT, pad_token=EOT,
                                   model_max_length=_COMMON["max_position_embeddings"])


def encode(tokenizer, texts: list[str]) -> torch.Tensor:
    eot = tokenizer.convert_tokens_to_ids(EOT)
    ids: list[int] = []
    for text in texts:
        ids.append(eot)
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
    return torch.tensor(ids, dtype=torch.int64)


def build(preset: str, seed: int):
    import transformers

    class_name, config = CONFIGS[preset]
    config_class = getattr(transformers, class_name.replace("ForCausalLM", "Config"))
    torch.manual_seed(seed)
    return getattr(transformers, class_name)(config_class(**config, attn_implementation="sdpa"))


def load(folder: str | Path):
    """``(model in FP32 eval mode, tokenizer)`` of a committed trained-LM folder."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(str(folder))
    model_class = getattr(transformers, config.architectures[0])
    model = model_class.from_pretrained(str(folder), dtype=torch.float32, attn_implementation="sdpa").eval()
    return model, transformers.AutoTokenizer.from_pretrained(str(folder))


@torch.no_grad()
def perplexity(model, ids: torch.Tensor, *, batch: int = 16) -> float:
    windows = ids[: len(ids) // SEQ_LEN * SEQ_LEN].view(-1, SEQ_LEN)
    total, count = 0.0, 0
    for start in range(0, len(windows), batch):
        chunk = windows[start : start + batch]
        logits = model(input_ids=chunk).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1),
                                                reduction="sum")
        total, count = total + float(nll), count + chunk[:, 1:].numel()
    return math.exp(total / count)


def unigram_perplexity(train_ids: torch.Tensor, ids: torch.Tensor) -> float:
    """Add-one unigram model fitted on ``train_ids``, scored on the tokens ``perplexity`` scores."""
    counts = torch.bincount(train_ids, minlength=VOCAB).double() + 1.0
    logp = (counts / counts.sum()).log()
    windows = ids[: len(ids) // SEQ_LEN * SEQ_LEN].view(-1, SEQ_LEN)[:, 1:].reshape(-1)
    return math.exp(float(-logp[windows].mean()))
