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
    varlen_attention,
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


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU's choice")
@torch.no_grad()
def test_without_cuda_the_plain_loss_and_attention_paths_are_chosen(model_and_features, tiny_tokenizer):
    """No CUDA (or no liger-kernel): no Liger patch, no fused loss, the plain head + fp32
    cross-entropy; the varlen kernel is not claimed, so `packing: auto` stays off."""
    from core.training.attention import NAME, attn_implementation_for
    from core.training.kernels import apply_kernels, fused_linear_cross_entropy, liger_enabled

    model, feats = model_and_features
    assert not liger_enabled() and not liger_enabled("cpu")
    assert apply_kernels(model) == []
    hidden, weight = torch.randn(3, 32), torch.randn(10, 32)
    assert fused_linear_cross_entropy(hidden, weight, torch.tensor([1, 2, 3])) is None
    assert attn_implementation_for("cpu") == NAME and attn_implementation_for("cuda") == "sdpa"
    assert not varlen_attention(model)
    batch = DynamicPaddingCollator(tiny_tokenizer.pad_token_id)(feats)
    loss_sum, n, correct = completion_loss(model, batch)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    keep = batch["labels"][:, 1:] != -100
    assert int(correct) == int((logits[keep].argmax(-1) == batch["labels"][:, 1:][keep]).sum())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fused_linear_cross_entropy_equals_the_plain_loss_on_cuda():
    """Liger's fused head + loss against the materialised logits: same loss sum and accuracy."""
    from core.training.kernels import fused_linear_cross_entropy, liger_enabled

    if not liger_enabled():
        pytest.skip("liger-kernel is not installed (the `gpu` extra)")
    torch.manual_seed(0)
    hidden = torch.randn(300, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    weight = torch.randn(5000, 256, device="cuda", dtype=torch.bfloat16) * 0.05
    targets = torch.randint(0, 5000, (300,), device="cuda")
    loss, correct = fused_linear_cross_entropy(hidden, weight, targets)
    logits = (hidden @ weight.T).float()
    ref = F.cross_entropy(logits, targets, reduction="sum")
    assert float(loss) == pytest.approx(float(ref), rel=2e-2)
    assert abs(int(correct) - int((logits.argmax(-1) == targets).sum())) <= 3
    loss.backward()
    assert hidden.grad is not None and hidden.grad.abs().sum() > 0
