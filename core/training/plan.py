"""The run plan: how one attempt splits its batch on the device it got (DESIGN §6.13).

The spec fixes the effective batch (`Hyperparameters.rows_per_gpu_step` rows per GPU per
optimizer step); the plan decides how much of it runs at once (the micro-batch, as rows and
as a token budget), how many micro-batches are accumulated, and whether gradient
checkpointing is on. It is made per attempt, on the worker, from the model's real shape and
the GPU's memory (`core.memory_plan.plan_fit`), so it never enters the spec's hash: a
resumed or OOM-retried attempt may run another micro-batch over the same trajectory.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from core.spec import JobSpec


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
