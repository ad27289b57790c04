"""A tiny random-init Llama with a real Korean tokenizer and a Llama-3 chat template (with
tool use, Llama-3.1 style: `chat_templates.LLAMA3_TOOLS`).

Tests, examples and benchmarks load it with `from_pretrained(dir)` through exactly the code
path a hub model takes, so the whole QLoRA pipeline runs on a CPU in seconds. The tokenizer
is the byte-level Korean BPE in `assets/` (MIT) plus the Llama-3 special tokens.
"""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).parent / "assets"
BASE_TOKENIZER = ASSETS / "korean_tokenizer_bbpe_vocab_18000.json"

BOS, EOS, EOT, PAD = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|eot_id|>",
    "<|finetune_right_pad_id|>",
)
SPECIAL_TOKENS = [BOS, EOS, "<|start_header_id|>", "<|end_header_id|>", EOT, PAD]


def make_tokenizer():
    """The asset BPE wrapped as a fast tokenizer with Llama-3 special tokens and chat template.

    Like Llama-3 base models: bos `<|begin_of_text|>`, eos `<|end_of_text|>`, turns end with
    `<|eot_id|>`, and a dedicated pad token (so pad != eos, though the pipeline never relies on it).
    """
    from tokenizers import Tokenizer, decoders, processors
    from transformers import PreTrainedTokenizerFast

    from core.training.chat_templates import LLAMA3_TOOLS

    backend = Tokenizer.from_file(str(BASE_TOKENIZER))
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend)
    tok.add_special_tokens({"bos_token": BOS, "eos_token": EOS, "pad_token": PAD})
    tok.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[2:5]})
    # Like Llama-3: plain `tok(text)` prepends BOS, so pasting a rendered chat (which already
    # starts with BOS) into it gives the double BOS the pipeline must avoid.
    bos_id = tok.convert_tokens_to_ids(BOS)
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    tok.chat_template = LLAMA3_TOOLS
    tok.padding_side = "right"
    tok.model_max_length = 4096
    return tok


def make_tiny_model(
    directory: str | Path, *, hidden_size: int = 64, layers: int = 2, seed: int = 0
) -> Path:
    """Write the tiny model + tokenizer to `directory` (created) and return it."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        # 4 heads at the tiny default; ~64-wide heads when a benchmark asks for a bigger model.
        num_attention_heads=max(4, hidden_size // 64),
        num_key_value_heads=max(2, hidden_size // 256),
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        # Wider than the 0.02 default: with hidden 64 and tied embeddings, 0.02 leaves logits so
        # flat that LoRA (which does not touch embeddings) learns a small task only erratically.
        initializer_range=0.1,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id,
        eos_token_id=[tok.eos_token_id, tok.convert_tokens_to_ids(EOT)],
        pad_token_id=tok.pad_token_id,
    )
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
