"""The run plan: how one attempt splits its batch on the device it got (DESIGN §6.13).

The spec fixes the effective batch (`Hyperparameters.rows_per_gpu_step` rows per GPU per
optimizer step); the plan decides how much of it runs at once (the micro-batch, as rows and
as a token budget), how many micro-batches are accumulated, and whether gradient
checkpointing is on. It is made per attempt, on the worker, from the model's real shape and
the GPU's memory (`core.memory_plan.plan_fit`), so it never enters the spec's hash: a
resumed or OOM-retried attempt may run another micro-batch over the same trajectory.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

from core.memory_plan import GiB, UnsupportedModel, plan_fit, setup_for_spec
from core.spec import JobSpec
from core.training.errors import TrainingInputError


@dataclass(frozen=True)
class RunPlan:
    micro_batch_size: int  # rows per forward/backward (padded batches)
    micro_batch_tokens: int  # the same as a token budget (packed batches fill it)
    gradient_accumulation_steps: int
    gradient_checkpointing: bool
    device: str = "cpu"
    gpu_name: str | None = None
    gpu_memory_bytes: int | None = None
    predicted_peak_bytes: int | None = None  # None where nothing was planned (CPU)
    required_bytes: int | None = None
    reason: str = ""  # why this plan: "planned for ...", "as the spec says", "out-of-memory retry"

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """One line for the job's events: "micro-batch 2 x accumulation 2, checkpointing on,
        predicted peak 17.0 GiB of 24.0 GiB"."""
        text = (
            f"micro-batch {self.micro_batch_size} x accumulation {self.gradient_accumulation_steps}, "
            f"checkpointing {'on' if self.gradient_checkpointing else 'off'}"
        )
        if self.predicted_peak_bytes is not None and self.gpu_memory_bytes:
            text += f", predicted peak {self.predicted_peak_bytes / GiB:.1f} GiB of {self.gpu_memory_bytes / GiB:.1f} GiB"
        return text


@dataclass(frozen=True)
class GpuInfo:
    """The GPU an attempt trains on, as the plan needs it (a parameter, so that tests can plan
    "for a 24 GB GPU" on the CPU)."""

    name: str
    memory_bytes: int


def local_gpu() -> GpuInfo | None:
    """This rank's GPU (`torch.cuda.get_device_properties(local rank)`), None on the CPU."""
    import torch

    from core.training.distributed import local_rank

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(local_rank())
    return GpuInfo(props.name, int(props.total_memory))


def spec_plan(spec: JobSpec, reason: str = "as the spec says (no GPU memory to plan for)") -> RunPlan:
    """The plan the spec itself implies: the whole `batch_size` at once, its own accumulation,
    checkpointing only when asked for. Used on the CPU, where memory is not the constraint."""
    hp = spec.hyperparameters
    return RunPlan(
        micro_batch_size=hp.batch_rows,
        micro_batch_tokens=hp.batch_rows * hp.max_seq_length,
        gradient_accumulation_steps=hp.gradient_accumulation_steps,
        gradient_checkpointing=hp.gradient_checkpointing is True,
        reason=reason,
    )


def make_plan(
    spec: JobSpec,
    model_config_or_dir,
    gpu: GpuInfo | None,
    *,
    compute_bytes: int = 2,
    gpus: int = 1,
    labelled_fraction: float = 1.0,
    rows_per_example: int = 1,
) -> RunPlan:
    """The plan for this attempt: `plan_fit` on the model's exact shape and this GPU's memory,
    for the spec's effective batch; on the CPU (`gpu` None) the spec's own plan.

    `model_config_or_dir`: a transformers config or the model's local directory.
    `rows_per_example`: 2 for DPO, whose every pair is a chosen and a rejected row in one
    forward. A plan that cannot fit raises `TrainingInputError` with plan_fit's numbers; a
    model the memory model does not describe runs the spec's own plan (and says so).
    """
    if gpu is None:
        return spec_plan(spec)
    from core.training.model_shape import shape_from_config

    hp = spec.hyperparameters
    config = model_config_or_dir
    if isinstance(config, (str, Path)):
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(config, trust_remote_code=spec.trust_remote_code)
    try:
        shape = shape_from_config(config)
    except (UnsupportedModel, ValueError, KeyError, AttributeError, TypeError) as e:
        # Not a decoder the memory model describes (or one that cannot be built from its config
        # alone, e.g. remote code): the spec's own plan, and the OOM retry behind it.
        return replace(spec_plan(spec, reason=f"as the spec says ({e})"), device="cuda", gpu_name=gpu.name,
                       gpu_memory_bytes=gpu.memory_bytes)
    setup = setup_for_spec(spec, compute_bytes=compute_bytes, gpus=gpus)
    per_gpu = hp.rows_per_gpu_step
    fit = plan_fit(
        shape,
        batch_size=per_gpu * gpus,
        max_seq_length=hp.max_seq_length,
        gpu_memory_bytes=gpu.memory_bytes,
        setup=setup,
        gradient_checkpointing=hp.gradient_checkpointing,
        labelled_fraction=labelled_fraction,
        gpu_name=gpu.name,
        rows_per_example=rows_per_example,
    )
    if not fit.fits:
        raise TrainingInputError(f"hyperparameters.max_seq_length: {fit.message}")
    micro, ckpt = fit.micro_batch_size, fit.gradient_checkpointing
    peak, required = fit.predicted_peak_bytes, fit.required_bytes
    return RunPlan(
        micro_batch_size=micro,
        micro_batch_tokens=micro * hp.max_seq_length,
        gradient_accumulation_steps=per_gpu // micro,
        gradient_checkpointing=ckpt,
        device="cuda",
        gpu_name=gpu.name,
        gpu_memory_bytes=gpu.memory_bytes,
        predicted_peak_bytes=peak,
        required_bytes=required,
        reason=f"planned for {gpu.name} ({gpu.memory_bytes / GiB:.1f} GiB)",
    )


def retry_plan(plan: RunPlan, rows_per_gpu_step: int) -> RunPlan | None:
    """The plan after an out-of-memory: half the micro-batch (the largest divisor of the
    per-GPU rows at most half of it, so the effective batch stays exact) and checkpointing on.
    None when there is nothing left to lower: one row per micro-batch with checkpointing."""
    if plan.micro_batch_size == 1 and plan.gradient_checkpointing:
        return None
    micro = largest_divisor_at_most(rows_per_gpu_step, plan.micro_batch_size // 2)
    tokens_per_row = plan.micro_batch_tokens // plan.micro_batch_size
    return replace(
        plan,
        micro_batch_size=micro,
        micro_batch_tokens=micro * tokens_per_row,
        gradient_accumulation_steps=rows_per_gpu_step // micro,
        gradient_checkpointing=True,
        predicted_peak_bytes=None,  # the plan that was predicted to fit did not
        required_bytes=None,
        reason=f"out-of-memory retry of micro-batch {plan.micro_batch_size}",
    )


def largest_divisor_at_most(n: int, k: int) -> int:
    """The largest divisor of n that is <= k (at least 1)."""
    return max((d for d in range(1, max(k, 1) + 1) if n % d == 0), default=1)
