"""Batches and the completion-only loss, shared by training and evaluation.

Why our own instead of the stock paths (measured in bench/pipeline.py):
- Dynamic padding to the longest row of the batch (DESIGN §6.5), never to max_seq_length;
  pad ids are masked by attention_mask and labels=-100 that come from the data stage, so the
  pad id's value never decides a label (pad may equal eos).
- The LM head runs only at positions that have a label. With completion-only loss most
  positions (the prompt, the padding) have none, and on small/medium models the
  hidden x vocab projection plus its log-softmax is most of the step. Stock trainers
  project every position and also compute entropy/accuracy over the full vocab each step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from core.training.encoding import IGNORE_INDEX


@dataclass
class DynamicPaddingCollator:
    """Right-pads a list of {input_ids, labels} to the longest in the batch."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            longest = (longest + m - 1) // m * m
        n = len(features)
        input_ids = torch.full((n, longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((n, longest), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((n, longest), dtype=torch.long)
        for i, f in enumerate(features):
            k = len(f["input_ids"])
            input_ids[i, :k] = torch.as_tensor(f["input_ids"])
            labels[i, :k] = torch.as_tensor(f["labels"])
            attention_mask[i, :k] = 1
        return {
            "input_ids": input_ids,
            "labels": labels,
            "attention_mask": attention_mask,
        }


@dataclass
class PaddingFreeCollator:
    """Packs the batch into one row with no padding; position_ids restart at 0 for each example.

    transformers 5 turns restarting position_ids (with no attention_mask) into per-example
    attention -- varlen kernels under flash-attention, a block-diagonal mask otherwise -- so
    examples never attend across their boundary. The first label of each example is ignored
    so no token is trained to predict the next example.
    """

    pad_token_id: int = 0  # unused: nothing is padded; kept for a uniform constructor

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        ids, labels, positions = [], [], []
        for f in features:
            n = len(f["input_ids"])
            ids += f["input_ids"]
            labels += [IGNORE_INDEX] + list(f["labels"][1:])
            positions += range(n)
        as_row = lambda xs: torch.tensor([xs], dtype=torch.long)
        return {
            "input_ids": as_row(ids),
            "labels": as_row(labels),
            "position_ids": as_row(positions),
        }


def varlen_attention(model) -> bool:
    """True when the model's attention runs packed sequences without a dense mask."""
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None) or ""
    return "flash" in impl


# Architectures whose logits are exactly lm_head(final hidden state): no softcapping
# (Gemma-2/3), no scaling (Cohere's logit_scale, Granite's logits_scaling, Falcon-H1's
# lm_head_multiplier, MiniCPM's width scaling). An allow-list, not a blacklist of config keys:
# a scaling factor under a name nobody listed silently gave a wrong loss (Granite: 14.5
# instead of 5.9). Anything else uses the model's own logits, which is always right.
PLAIN_LOGITS = frozenset(
    {
        "llama",
        "mistral",
        "mixtral",
        "qwen2",
        "qwen2_moe",
        "qwen3",
        "qwen3_moe",
        "phi3",
        "gemma",
        "olmo2",
        "starcoder2",
    }
)


def supports_selective_head(model) -> bool:
    """True when logits are proven plain lm_head(hidden) for this architecture (PLAIN_LOGITS)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return (
        getattr(base.config, "model_type", None) in PLAIN_LOGITS
        and hasattr(base, "get_decoder")
        and base.get_output_embeddings() is not None
    )


def completion_loss(
    model, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sum of token losses, number of labelled tokens, number predicted right) for a batch.

    Computed in fp32 on the labelled positions only. Works on a PEFT model or a plain one.
    """
    labels = batch["labels"]
    shift_labels = labels[:, 1:]
    keep = shift_labels != IGNORE_INDEX
    if supports_selective_head(model):
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        hidden = base.get_decoder()(**_model_inputs(batch)).last_hidden_state
        logits = base.get_output_embeddings()(hidden[:, :-1][keep])
    else:
        logits = model(**_model_inputs(batch)).logits[:, :-1][keep]
    targets = shift_labels[keep]
    logits = logits.float()
    loss_sum = F.cross_entropy(logits, targets, reduction="sum")
    with torch.no_grad():
        correct = (logits.argmax(-1) == targets).sum()
    return loss_sum, keep.sum(), correct


def _model_inputs(batch: dict[str, torch.Tensor]) -> dict:
    keys = ("input_ids", "attention_mask", "position_ids")
    return {k: batch[k] for k in keys if batch.get(k) is not None} | {
        "use_cache": False
    }
