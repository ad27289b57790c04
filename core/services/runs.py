"""What a runner (the worker supervising one job attempt) writes, all fenced by `attempt`.

A job may be delivered twice (acks_late, a redelivered message, a reconciler re-dispatch);
`claim_job` lets exactly one delivery win. From then on every write carries the attempt
number it was given: once the job has moved on (a newer attempt, or it was re-queued or
finished without this runner) the write raises StaleAttempt and the runner stops, so a
zombie runner can never overwrite its successor's progress.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from core.errors import StaleAttempt
from core.models import Artifact, Checkpoint, Job, Metric, Worker, as_utc, utcnow
from core.notify import JOB_CHANGED, notify
from core.services import series
from core.services import webhooks
from core.services.lifecycle import add_event, check_fence, lock_job, set_job_status
from core.states import ACTIVE, JobStatus

S = JobStatus
CONTROL = {S.PAUSING.value: "pause", S.CANCELLING.value: "cancel"}


@dataclass(frozen=True)
class Claim:
    job_id: str
    attempt: int
    team_id: str
    spec: dict[str, Any]
    spec_hash: str
    max_attempts: int = 3


def claim_job(session: Session, job_id: str, worker_id: str, lease_seconds: float) -> Claim | None:
    """queued -> running for one caller only; None when the job is not (any longer) queued.

    The conditional UPDATE is the claim on every database: on PostgreSQL it row-locks, on
    SQLite it takes the write lock, and the loser of a race updates zero rows.
    """
    now = utcnow()
    claimed = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.status == S.QUEUED.value,
            # Dispatched to this worker, or not dispatched at all (a direct run): a stale
            # message for a job the scheduler has since given to another worker loses.
            or_(Job.worker_id.is_(None), Job.worker_id == worker_id),
        )
        .values(attempt=Job.attempt + 1, worker_id=worker_id, lease_expires_at=now + timedelta(seconds=lease_seconds))
        .execution_options(synchronize_session=False)
    ).rowcount
    if claimed != 1:
        return None
    job = session.execute(
        select(Job).where(Job.id == job_id).execution_options(populate_existing=True)
    ).scalar_one()
    set_job_status(
        session, job.id, S.RUNNING, attempt=job.attempt, job=job,
        message=f"Attempt {job.attempt} started on worker {worker_id}",
        data={"attempt": job.attempt, "worker_id": worker_id},
    )
    return Claim(job.id, job.attempt, job.team_id, dict(job.spec), job.spec_hash, job.max_attempts or 1)


def deliverable(session: Session, job_id: str, worker_id: str) -> bool:
    """Whether a RUN_JOB delivery to this worker could still win the claim. A duplicate of a
    job that already runs (or was given to another worker) is dropped before it takes a
    slot; the claim itself stays the only guarantee."""
    job = session.get(Job, job_id)
    return job is not None and job.status == S.QUEUED.value and job.worker_id in (None, worker_id)


def _fenced(session: Session, job_id: str, attempt: int) -> Job:
    """The locked job, if `attempt` still owns it (current attempt and still running)."""
    job = lock_job(session, job_id)
    check_fence(job, attempt)
    if job.status not in ACTIVE:
        raise StaleAttempt(f"attempt {attempt} of job {job.id} no longer runs it (job is {job.status})")
    return job


def heartbeat(session: Session, job_id: str, attempt: int, lease_seconds: float) -> str | None:
    """Extend the lease; returns what the client asked for meanwhile: None, "pause" or "cancel"."""
    job = _fenced(session, job_id, attempt)
    job.lease_expires_at = utcnow() + timedelta(seconds=lease_seconds)
    return CONTROL.get(job.status)


def record_phase(session: Session, job_id: str, attempt: int, phase: str) -> None:
    job = _fenced(session, job_id, attempt)
    if job.phase != phase:
        job.phase = phase
        add_event(session, job, f"Phase: {phase.replace('_', ' ')}", type="phase", data={"phase": phase})


def record_event(session: Session, job_id: str, attempt: int, level: str, message: str, data: dict | None = None) -> None:
    job = _fenced(session, job_id, attempt)
    add_event(session, job, message, level=level if level in ("info", "warn", "error") else "info", data=data)


def record_metrics(session: Session, job_id: str, attempt: int, step: int, values: dict[str, Any]) -> None:
    """One Metric row per step. The same attempt merges (training then eval values of the
    last step); a newer attempt replaying a step after resume replaces it."""
    job = _fenced(session, job_id, attempt)
    row = session.get(Metric, (job_id, step))
    if row is None:
        session.add(Metric(job_id=job_id, step=step, seq=series.position_for(session, job_id, step), attempt=attempt, values=dict(values)))
    else:
        row.values = {**row.values, **values} if row.attempt == attempt else dict(values)
        row.attempt = attempt
    job.step = step
    if isinstance(values.get("total_steps"), int) and values["total_steps"] > 0:
        job.total_steps = values["total_steps"]
    job.latest_metrics = {**(job.latest_metrics or {}), **values}
    _estimate_finish(job)
    notify(session, JOB_CHANGED, job_id)  # open streams read the new point after the commit


def _estimate_finish(job: Job) -> None:
    """Linear extrapolation from this attempt's start; good enough for a progress display."""
    if not (job.started_at and job.step and job.total_steps):
        return
    start = as_utc(job.started_at)
    elapsed = (utcnow() - start).total_seconds()
    job.estimated_finish = utcnow() + timedelta(seconds=elapsed / job.step * max(job.total_steps - job.step, 0))


def record_checkpoint(
    session: Session, job_id: str, attempt: int, step: int, storage_key: str, metrics: dict | None = None
) -> Checkpoint:
    job = _fenced(session, job_id, attempt)
    ckpt = session.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.step == step)).one_or_none()
    if ckpt is None:
        ckpt = Checkpoint(job_id=job_id, step=step)
        session.add(ckpt)
    ckpt.attempt, ckpt.spec_hash, ckpt.storage_key, ckpt.metrics = attempt, job.spec_hash, storage_key, metrics or {}
    add_event(session, job, f"Checkpoint saved at step {step}", type="checkpoint", data={"step": step, "metrics": metrics or {}})
    webhooks.checkpoint_created(session, job, step, metrics)
    return ckpt


def newest_checkpoint(session: Session, job_id: str) -> Checkpoint | None:
    """The checkpoint a new attempt resumes from: the highest step written for the job's
    current spec (a checkpoint of another spec would resume a different training)."""
    job = session.get(Job, job_id)
    return session.scalars(
        select(Checkpoint)
        .where(Checkpoint.job_id == job_id, Checkpoint.spec_hash == job.spec_hash)
        .order_by(Checkpoint.step.desc())
        .limit(1)
    ).first()


def record_artifact(
    session: Session, job_id: str, attempt: int, name: str, size: int, sha256: str, storage_key: str
) -> Artifact:
    _fenced(session, job_id, attempt)
    art = session.scalars(select(Artifact).where(Artifact.job_id == job_id, Artifact.name == name)).one_or_none()
    if art is None:
        art = Artifact(job_id=job_id, name=name)
        session.add(art)
    art.bytes, art.sha256, art.storage_key = size, sha256, storage_key
    return art


def finish(
    session: Session,
    job_id: str,
    attempt: int,
    status: JobStatus | str,
    error: dict[str, Any] | None = None,
    result: dict[str, Any] | None = None,
    *,
    message: str | None = None,
    data: dict[str, Any] | None = None,
    fine_tuned_model: str | None = None,
    trained_tokens: int | None = None,
) -> Job:
    """End this attempt: succeeded / failed / cancelled, or paused (resumable later)."""
    job = _fenced(session, job_id, attempt)
    status = JobStatus(status)
    if result is not None:
        job.result = result
    if fine_tuned_model is not None:
        job.fine_tuned_model = fine_tuned_model
    if trained_tokens is not None:
        job.trained_tokens = trained_tokens
    if status is S.SUCCEEDED and job.total_steps:
        job.step = job.total_steps
    if status is S.SUCCEEDED:
        record_throughput(session, job)
    job.estimated_finish = None
    return set_job_status(session, job.id, status, attempt=attempt, job=job, message=message, error=error, data=data)


def record_throughput(session: Session, job: Job) -> None:
    """What the run measured, for the time estimates of later dry runs (core.services.fit):
    the GPU kind of the worker that ran it and the job's training tokens/s. The logged
    `tokens_per_second` counts the non-pad tokens one process fed its model, so a job on N
    GPUs (N data-parallel ranks) processed N times as many."""
    worker = session.get(Worker, job.worker_id) if job.worker_id else None
    job.gpu_name = worker.gpu_name if worker is not None and worker.gpus else None
    mean = session.scalar(
        select(func.avg(Metric.values["tokens_per_second"].as_float())).where(Metric.job_id == job.id)
    )
    job.tokens_per_second = float(mean) * max(job.gpus or 0, 1) if mean else None
