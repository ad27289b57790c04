"""The loss path: selective LM head == full logits loss; packing keeps examples apart."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from core.training.batching import (
    DynamicPaddingCollator,
    PaddingFreeCollator,
    completion_loss,
    supports_selective_head,
)
from core.training.encoding import encode

CONVS = [
    [
        {"role": "user", "content": "다음 글을 요약해주세요: 과학 뉴스"},
        {"role": "assistant", "content": "요약 하나"},
    ],
    [
        {"role": "user", "content": "짧은 질문"},
        {"role": "assistant", "content": "조금 더 긴 답변입니다 정말로"},
    ],
    [
        {"role": "user", "content": "세 번째 " * 5},
        {"role": "assistant", "content": "셋"},
    ],
]


@pytest.fixture(scope="module")
def model_and_features(tiny_model_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir, dtype=torch.float32
    ).eval()
    feats = []
    for turns in CONVS:
        enc = encode(tiny_tokenizer, turns, "<|eot_id|>", 128)
        feats.append({"input_ids": enc.input_ids, "labels": enc.labels})
    return model, feats


@torch.no_grad()
def test_selective_head_matches_full_logits_loss(model_and_features, tiny_tokenizer):
    model, feats = model_and_features
    batch = DynamicPaddingCollator(tiny_tokenizer.pad_token_id)(feats)
    loss_sum, n, _ = completion_loss(model, batch)
    logits = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
    ).logits
    ref = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
        batch["labels"][:, 1:].reshape(-1),
        ignore_index=-100,
        reduction="sum",
    )
    assert n == (batch["labels"][:, 1:] != -100).sum()
    assert loss_sum.item() == pytest.approx(ref.item(), rel=1e-5)


@torch.no_grad()
def test_packed_batch_respects_example_boundaries(model_and_features, tiny_tokenizer):
    model, feats = model_and_features
    padded = completion_loss(
        model, DynamicPaddingCollator(tiny_tokenizer.pad_token_id)(feats)
    )
    packed_batch = PaddingFreeCollator()(feats)
    assert packed_batch["input_ids"].shape == (
        1,
        sum(len(f["input_ids"]) for f in feats),
    )  # no padding at all
    packed = completion_loss(model, packed_batch)
    assert packed[1] == padded[1]
    assert packed[0].item() == pytest.approx(padded[0].item(), rel=1e-4)
    # Without restarting positions the examples would see each other: the loss changes.
    leaky = dict(
        packed_batch,
        position_ids=torch.arange(packed_batch["input_ids"].shape[1])[None],
    )
    assert completion_loss(model, leaky)[0].item() != pytest.approx(
        padded[0].item(), rel=1e-4
    )


TINY = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, initializer_range=0.5)
SCALED_LOGITS = {
    "granite": dict(logits_scaling=8.0),
    "falcon_h1": dict(lm_head_multiplier=0.1, mamba_d_ssm=32, mamba_n_heads=4, mamba_d_head=8, mamba_d_state=8,
                      mamba_n_groups=1, mamba_chunk_size=16),
    "gemma2": dict(final_logit_softcapping=2.0),
    "cohere": dict(logit_scale=0.25),
}


@pytest.mark.parametrize("model_type", [*SCALED_LOGITS, "llama"])
def test_loss_equals_the_models_own_logits_whatever_the_head(model_type):
    """Models that scale or cap their logits (under names no blacklist knew) get the model's
    own logits; the selective head only runs where logits are plain lm_head(hidden)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, **TINY, **SCALED_LOGITS.get(model_type, {}))
    model = AutoModelForCausalLM.from_config(config).eval()
    assert supports_selective_head(model) == (model_type == "llama")
    ids = torch.randint(0, 128, (2, 12))
    labels = ids.clone()
    labels[:, :5] = -100
    batch = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}
    with torch.no_grad():
        loss_sum, n, _ = completion_loss(model, batch)
        logits = model(input_ids=ids, attention_mask=batch["attention_mask"]).logits[:, :-1]
    reference = F.cross_entropy(logits.reshape(-1, 128).float(), labels[:, 1:].reshape(-1), reduction="sum")
    assert int(n) == 14 and float(loss_sum) == pytest.approx(float(reference), rel=1e-5)
