"""The loss path: selective LM head == full logits loss; packing keeps examples apart."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from core.training.batching import (
    DynamicPaddingCollator,
    PaddingFreeCollator,
    completion_loss,
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
