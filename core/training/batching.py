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

from core.training.attention import NAME as ATTENTION_NAME
from core.training.attention import PACKED_KWARGS, packed_kwargs, varlen_kernel_available
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

    The row also carries its segment boundaries (`cu_seq_lens_q/k`, `max_length_q/k`), which
    the varlen kernels use directly: "tuneforge_varlen" (core/training/attention.py) and
    flash-attention. Under plain sdpa, transformers 5 turns the restarting position_ids (with
    no attention_mask) into a block-diagonal mask. Either way examples never attend across
    their boundary. The first label of each example is ignored so no token is trained to
    predict the next example (its first token follows the previous example's last).
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
            **packed_kwargs([len(f["input_ids"]) for f in features]),
        }


def varlen_attention(model) -> bool:
    """True when the model's attention runs packed sequences without a dense mask: a flash
    implementation, or "tuneforge_varlen" on a CUDA device (its CPU path is boundary-safe but
    loops over examples, so it is no reason to pack by default there)."""
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None) or ""
    if "flash" in impl:
        return True
    param = next(model.parameters(), None)
    return impl == ATTENTION_NAME and param is not None and varlen_kernel_available(param.device)


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
    On CUDA with Liger (kernels.py) the head and the loss are one fused kernel over those
    positions (hidden[keep] x lm_head.weight, the logits never held); elsewhere the head runs
    on them and the loss follows.
    """
    from core.training.kernels import fused_linear_cross_entropy

    labels = batch["labels"]
    shift_labels = labels[:, 1:]
    keep = shift_labels != IGNORE_INDEX
    targets = shift_labels[keep]
    if supports_selective_head(model):
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        hidden = base.get_decoder()(**_model_inputs(batch)).last_hidden_state[:, :-1][keep]
        head = base.get_output_embeddings()
        fused = fused_linear_cross_entropy(hidden, head.weight, targets) if head.bias is None else None
        if fused is not None:
            return fused[0], keep.sum(), fused[1]
        logits = head(hidden)
    else:
        logits = model(**_model_inputs(batch)).logits[:, :-1][keep]
    logits = logits.float()
    loss_sum = F.cross_entropy(logits, targets, reduction="sum")
    with torch.no_grad():
        correct = (logits.argmax(-1) == targets).sum()
    return loss_sum, keep.sum(), correct


def _model_inputs(batch: dict[str, torch.Tensor]) -> dict:
    keys = ("input_ids", "attention_mask", "position_ids", *PACKED_KWARGS)
    return {k: batch[k] for k in keys if batch.get(k) is not None} | {
        "use_cache": False
    }
