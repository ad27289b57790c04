"""Fused GPU kernels from Liger (the optional `gpu` extra): RMSNorm, SwiGLU, RoPE, and the fused
linear cross-entropy of `batching.completion_loss`.

Only where they help and are proven: a CUDA device and `liger_kernel` importable. Anywhere else
(the CPU, a GPU host without the extra) every function here is a no-op and the plain PyTorch
path runs unchanged -- that path is the one the CPU suite tests.

Why these: in a QLoRA step of an 8B model the 4-bit matmuls dominate, but RMSNorm, the SwiGLU
gate and RoPE are separate memory-bound elementwise kernels in eager PyTorch (each reads and
writes the whole activation, several times in fp32), and the head's logits at the labelled
positions (tokens x 128256 x 4 bytes for the fp32 loss) are the largest activation of the step.
Liger fuses each elementwise chain into one Triton kernel and computes the cross-entropy chunk
by chunk from the hidden states and the head weight, never holding the logits.
"""

from __future__ import annotations

import functools
import importlib.util
import logging

import torch

log = logging.getLogger(__name__)

# Patched per instance (after loading): rope, RMSNorm, SwiGLU. Not Liger's own cross-entropy
# patch of the model's forward: our loss never calls the model's head (batching.completion_loss
# projects only the labelled positions) and uses `fused_linear_cross_entropy` below instead.
PATCHES = {"rope": True, "rms_norm": True, "swiglu": True, "cross_entropy": False, "fused_linear_cross_entropy": False}


@functools.cache
def liger_installed() -> bool:
    """The `gpu` extra is installed (looked up once: the loss asks on every training step)."""
    return importlib.util.find_spec("liger_kernel") is not None


def liger_enabled(device: str | torch.device | None = None) -> bool:
    """True when the fused kernels run: a CUDA device and the `gpu` extra installed."""
    on_cuda = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()
    return on_cuda and torch.cuda.is_available() and liger_installed()


def apply_kernels(model) -> list[str]:
    """Swap in Liger's RMSNorm / SwiGLU / RoPE on a loaded base model (before LoRA wraps it);
    returns the kernels applied ([] when Liger is off or knows no kernels for this model type).

    Called by `model.load_model` right after the base model is loaded, so it needs no model
    type ahead of loading. Liger patches the instance's modules and, in passing, the model
    type's transformers module (its RoPE function, norm and MLP classes): later loads of that
    type in the same process get the same kernels, which on a CUDA worker they would anyway.
    """
    device = next(model.parameters()).device
    if not liger_enabled(device):
        return []
    from liger_kernel.transformers import _apply_liger_kernel_to_instance
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    model_type = getattr(model.config, "model_type", None)
    if model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        return []
    _apply_liger_kernel_to_instance(model=model, **PATCHES)
    applied = [k for k, on in PATCHES.items() if on]
    log.info("liger kernels on %s: %s", model_type, ", ".join(applied))
    return applied


def fused_linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(sum of token losses, number predicted right) of `hidden @ weight.T` against targets,
    without materialising the logits; None where Liger is off (the caller projects itself).

    `hidden` holds only the labelled positions (N, H), so nothing is ignored. Liger accumulates
    the loss in fp32 and returns the token accuracy from the same pass (its
    `return_token_accuracy`), so accuracy costs no second projection.
    """
    if not (hidden.is_cuda and liger_enabled(hidden.device)):
        return None
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    if hidden.shape[0] == 0:  # a micro-batch without labels: a zero loss that keeps the graph
        zero = hidden.sum() * 0.0
        return zero.float(), torch.zeros((), dtype=torch.long, device=hidden.device)
    # The matmul in the dtype autocast would give the head (peft's k-bit preparation keeps the
    # head's weight in fp32; an fp32 matmul over a 128k vocabulary is several times slower).
    dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else weight.dtype
    out = liger_fused_linear_cross_entropy(
        hidden.to(dtype).contiguous(), weight.to(dtype), targets, reduction="sum", return_token_accuracy=True
    )
    correct = (out.token_accuracy.detach() * targets.numel()).round().long()
    return out.loss.float(), correct
