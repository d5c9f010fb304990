"""A tiny random Llama with a locally trained BPE tokenizer and a ChatML template.

Contract: ``build_tiny_model(out_dir, seed)`` writes a Hugging Face model directory (config, bf16
safetensors, tokenizer, chat template) that vLLM and transformers load offline. The same seed gives
byte-identical weights and tokenizer. Nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_WORDS = (  # noqa: SIM905 - a word list reads better as prose
    "retail media network shopper brand retailer sponsored product display offsite onsite budget "
    "campaign return ad spend incremental revenue margin stock promo coffee snack cereal detergent "
    "shampoo juice yogurt the a of to and in for with on by plan creative audience basket category "
    "price week daily click impression purchase conversion new to brand loyalty reach frequency "
).split()


def _corpus(seed: int, lines: int = 2000) -> list[str]:
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 16))) for _ in range(lines)]


def _tokenizer(seed: int, vocab_size: int) -> Any:
    """A byte-level BPE tokenizer trained on the seed's corpus, with the ChatML special tokens and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


# architecture -> (transformers config class, extra config fields); every one is a decoder vLLM serves with LoRA
ARCHITECTURES: dict[str, tuple[str, dict[str, object]]] = {
    "llama": ("LlamaConfig", {}),
    "qwen2": ("Qwen2Config", {}),  # q/k/v with biases
    "mistral": ("MistralConfig", {"sliding_window": None}),
    "gemma": ("GemmaConfig", {"head_dim": 32, "hidden_act": "gelu_pytorch_tanh"}),  # head_dim != hidden/heads
    "phi3": ("Phi3Config", {}),  # fused qkv_proj and gate_up_proj
}


def build_tiny_model(
    out_dir: Path,
    seed: int = 0,
    hidden_size: int = 256,
    num_layers: int = 4,
    vocab_size: int = 512,
    architecture: str = "llama",
    max_shard_size: str | None = None,
) -> Path:
    """Write a deterministic tiny decoder (``architecture``: a key of :data:`ARCHITECTURES`) + tokenizer to
    ``out_dir``, sharded when ``max_shard_size`` (e.g. "300KB") is given; returns ``out_dir``."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture {architecture!r}: one of {sorted(ARCHITECTURES)}")
    config_cls, extra = ARCHITECTURES[architecture]

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast = _tokenizer(seed, vocab_size)
    fast.save_pretrained(out_dir)

    torch.manual_seed(seed)
    fields = dict(
        vocab_size=len(fast),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
    )
    fields.update(extra)
    cfg = getattr(transformers, config_cls)(**fields)
    model = AutoModelForCausalLM.from_config(cfg)
    # Larger than default init so greedy outputs depend visibly on the prompt (and on adapters).
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.08)
    model = model.bfloat16()
    shard = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(out_dir, safe_serialization=True, **shard)
    (out_dir / "generation_config.json").write_text(
        json.dumps({"bos_token_id": fast.bos_token_id, "eos_token_id": fast.eos_token_id, "do_sample": False})
    )
    return out_dir
