"""Fit planning in the control plane: what a job needs of a GPU, whether the pool has one, and
how long it should take there (issue 12, "Fit planning").

The memory model is core.memory_plan (arithmetic over the architecture); this module feeds it
what the API knows before any worker is involved:

- the model's shape from its `config.json` (core.model_config: a local directory's file or one
  small hub download; never an error: unreadable means the plan is *unknown*);
- the training setup from the spec (`training_setup`: LoRA rank/targets/dropout, quantisation,
  GPUs, bf16 on a GPU);
- the live pool's GPU kinds (distinct `Worker.gpu_name` / `gpu_memory_gb` of live workers with
  enough GPUs for the job, by the planner's liveness rule).

From that, at create and at validate (`plan_job`):

- `planned_gpu_memory_gb`: what one GPU needs at the smallest micro-batch (one row, a pair
  for DPO, with
  gradient checkpointing unless the job turned it off). It depends on the job alone, not on
  the pool, so it is stored on the job and the scheduler never places the job on a GPU worker
  with less (core.services.planner.job_fits). Units are those of `Worker.gpu_memory_gb`: GiB
  (worker/app.py divides nvidia-smi's MiB by 1024).
- the plan per GPU kind (`core.memory_plan.plan_fit`: micro-batch, accumulation,
  checkpointing, predicted peak) -- what the worker will choose on that GPU.
- the refusal: when the job asks for a GPU and the pool has GPU workers that could take it but
  none has the memory, the request is refused (400, `hyperparameters.max_seq_length`,
  code `does_not_fit`) with the numbers and what to lower, the message of
  `DoesNotFit` for the largest GPU. A pool without GPU workers (the embedded CPU mode) never
  refuses on memory, and neither does an unknown plan: the worker plans again at attempt
  start and the out-of-memory retry covers the rest.

The time estimate (`estimate_seconds`) divides the tokens the run will process by the measured
throughput of recent finished jobs of the same model on the same GPU kind (`jobs.gpu_name`,
`jobs.tokens_per_second`, written at success by core.services.runs).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.config import Settings
from core.errors import InvalidRequest
from core.memory_plan import GiB, DoesNotFit, FitPlan, TrainingSetup, UnsupportedModel, estimate, plan_fit, setup_for_spec, shape_from_config_dict
from core.model_config import model_config
from core.models import Job, Worker, utcnow
from core.services.planner import is_live
from core.spec import JobSpec
from core.states import JobStatus

#: Finished jobs whose measured throughput is averaged (newest first) for a time estimate.
THROUGHPUT_SAMPLE = 5


@dataclass(frozen=True)
class GpuKind:
    """One kind of GPU in the live pool: its name and memory (GiB), and how many workers have it."""

    name: str | None
    memory_gb: float
    workers: int


@dataclass
class JobFit:
    """The plan of one job. `status`: "planned" (the shape is known), "unknown" (`reason` says
    why: no config, not a Llama-family decoder), or "not_applicable" (a CPU job)."""

    status: str
    reason: str | None = None
    needed_bytes: int | None = None
    kinds: list[tuple[GpuKind, FitPlan | DoesNotFit]] = field(default_factory=list)
    summary: dict = field(default_factory=dict)

    @property
    def planned_gpu_memory_gb(self) -> float | None:
        return round(self.needed_bytes / GiB, 2) if self.needed_bytes is not None else None

    def as_dict(self) -> dict:
        """What `Job.plan` stores (JSON)."""
        return {
            "status": self.status,
            **({"reason": self.reason} if self.reason else {}),
            **self.summary,
            "needed_gpu_memory_gb": self.planned_gpu_memory_gb,
            "gpus": [kind_plan(kind, p) for kind, p in self.kinds],
        }


def training_setup(spec: JobSpec) -> TrainingSetup:
    """A GPU run of the spec: bf16/fp16 compute unless the job asks for fp32, CUDA's one-byte
    dropout masks, the job's GPUs."""
    compute = 4 if spec.quantization.compute_dtype == "fp32" else 2
    return setup_for_spec(spec, compute_bytes=compute, gpus=max(spec.resources.gpus, 1))


def plan_job(session: Session, settings: Settings, spec: JobSpec, now: datetime | None = None) -> JobFit:
    """The job's fit plan against the live pool; raises InvalidRequest when it fits no GPU
    worker that could otherwise take it (see the module doc)."""
    if spec.resources.gpus < 1:
        return JobFit("not_applicable", "the job asks for a CPU slot (resources.gpus 0)")
    found = model_config(spec.model, spec.revision, cache_dir=settings.model_cache)
    if found.config is None:
        return JobFit("unknown", found.reason)
    try:
        shape = shape_from_config_dict(found.config)
    except UnsupportedModel as e:
        return JobFit("unknown", str(e))
    hp = spec.hyperparameters
    setup = training_setup(spec)
    ckpt = hp.gradient_checkpointing
    rows = 2 if spec.method.type == "dpo" else 1  # a DPO pair is a chosen and a rejected row in one forward
    smallest = estimate(shape, setup, micro_batch_size=rows, max_seq_length=hp.max_seq_length,
                        gradient_checkpointing=ckpt is not False)
    fit = JobFit("planned", needed_bytes=smallest.required, summary={
        "model_type": found.config.get("model_type"),
        "parameters": shape.total_params,
        "max_seq_length": hp.max_seq_length,
        "rows_per_gpu_step": hp.rows_per_gpu_step,
        "gradient_checkpointing": ckpt,
    })
    minimum = spec.resources.min_gpu_memory_gb
    for kind in gpu_kinds(session, settings, spec.resources.gpus, now):
        if minimum is not None and kind.memory_gb < minimum:
            continue  # the client ruled this kind out itself
        label = f"the largest worker GPU ({kind.name})" if kind.name else "the largest worker GPU"
        fit.kinds.append((kind, plan_fit(
            shape, batch_size=hp.rows_per_gpu_step * setup.gpus, max_seq_length=hp.max_seq_length,
            gpu_memory_bytes=int(kind.memory_gb * GiB), setup=setup, gradient_checkpointing=ckpt, gpu_name=label,
            rows_per_example=rows,
        )))
    if fit.kinds and not any(p.fits for _, p in fit.kinds):
        refused: DoesNotFit = fit.kinds[0][1]  # the largest GPU: kinds come largest first
        raise InvalidRequest(
            refused.message,
            param="hyperparameters.max_seq_length" if refused.largest_fitting_seq_length else "model",
            code="does_not_fit",
        )
    return fit


def gpu_kinds(session: Session, settings: Settings, gpus: int, now: datetime | None = None) -> list[GpuKind]:
    """Distinct GPU kinds of the live workers with at least `gpus` GPUs, largest memory first."""
    now = now or utcnow()
    live = is_live(now, timedelta(seconds=settings.worker_timeout_seconds))
    rows = session.execute(
        select(Worker.gpu_name, Worker.gpu_memory_gb)
        .where(live, Worker.gpus >= max(gpus, 1), Worker.gpu_memory_gb.is_not(None))
    ).all()
    counts: dict[tuple, int] = {}
    for name, memory in rows:
        counts[(name, memory)] = counts.get((name, memory), 0) + 1
    kinds = [GpuKind(name, memory, n) for (name, memory), n in counts.items()]
    return sorted(kinds, key=lambda k: (-k.memory_gb, k.name or ""))


def kind_plan(kind: GpuKind, plan: FitPlan | DoesNotFit) -> dict:
    """One GPU kind's plan as the API shows it (GiB figures rounded to 0.1)."""
    out = {"gpu_name": kind.name, "gpu_memory_gb": kind.memory_gb, "workers": kind.workers, "fits": plan.fits}
    if isinstance(plan, FitPlan):
        out.update(
            micro_batch_size=plan.micro_batch_size,
            micro_batch_tokens=plan.micro_batch_tokens,
            gradient_accumulation_steps=plan.gradient_accumulation_steps,
            gradient_checkpointing=plan.gradient_checkpointing,
            predicted_peak_gb=round(plan.predicted_peak_bytes / GiB, 1),
            required_gb=round(plan.required_bytes / GiB, 1),
        )
    else:
        out.update(required_gb=round(plan.required_bytes / GiB, 1), message=plan.message,
                   largest_fitting_seq_length=plan.largest_fitting_seq_length)
    return out


# --- throughput and the time estimate ------------------------------------------------------


def measured_throughput(session: Session, model: str, gpu_name: str | None, gpus: int) -> float | None:
    """Mean tokens/s of the newest finished jobs of `model` on `gpu_name` with as many GPUs
    (ix_jobs_throughput: model, gpu_name, finished_at); None when none has run."""
    rows = session.scalars(
        select(Job.tokens_per_second)
        .where(Job.model == model, Job.gpu_name == gpu_name, Job.gpus == gpus,
               Job.status == JobStatus.SUCCEEDED.value, Job.tokens_per_second.is_not(None))
        .order_by(Job.finished_at.desc()).limit(THROUGHPUT_SAMPLE)
    ).all()
    return statistics.fmean(rows) if rows else None


def validation_plan(session: Session, spec: JobSpec, fit: JobFit, counts: dict | None) -> dict:
    """The plan a dry run returns: the stored plan's figures per GPU kind, the tokens and
    optimizer steps from the worker's token counts, and a time estimate per kind."""
    out = fit.as_dict()
    trained = (counts or {}).get("trained_tokens")
    out["total_tokens"] = trained
    out["train_tokens"] = ((counts or {}).get("train_tokens") or {}).get("total_tokens")
    out["optimizer_steps"] = (counts or {}).get("estimated_steps")
    for kind, shown in zip((k for k, _ in fit.kinds), out["gpus"]):
        shown["estimated_seconds"], reason = estimate_seconds(session, spec, kind.name, trained)
        if reason:
            shown["estimate_reason"] = reason
    return out


def estimate_seconds(session: Session, spec: JobSpec, gpu_name: str | None, trained_tokens: int | None) -> tuple[float | None, str | None]:
    """(seconds, None) or (None, why there is no estimate)."""
    if trained_tokens is None:
        return None, "no token counts (the dry run did not finish)"
    tps = measured_throughput(session, spec.model, gpu_name, spec.resources.gpus)
    if tps is None or tps <= 0:
        return None, f"no job of {spec.model} with {spec.resources.gpus} GPU(s) has finished on {gpu_name or 'this GPU kind'} yet"
    return round(trained_tokens / tps, 1), None
