"""The one writer of Job.status (DESIGN.md §5).

Locks the job row, checks the rule table in core.states, enforces the fencing token of a
runner (`attempt`), appends a JobEvent, and updates the denormalized job columns.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.errors import IllegalTransition, NotFound, StaleAttempt
from core.models import Job, JobEvent, utcnow
from core.notify import JOB_CHANGED, PLAN, notify
from core.services import webhooks
from core.states import JobStatus, can_transition, is_terminal


def lock_job(session: Session, job_id: str) -> Job:
    job = session.execute(select(Job).where(Job.id == job_id).with_for_update()).scalar_one_or_none()
    if job is None:
        raise NotFound(f"No job with id {job_id!r}", param="fine_tuning_job_id")
    return job


def check_fence(job: Job, attempt: int | None) -> None:
    """A runner's write is accepted only while its attempt is the job's current one."""
    if attempt is not None and job.attempt != attempt:
        raise StaleAttempt(f"attempt {attempt} of job {job.id} is stale (current attempt is {job.attempt})")


def add_event(
    session: Session,
    job: Job,
    message: str,
    *,
    type: str = "message",
    level: str = "info",
    data: dict[str, Any] | None = None,
) -> JobEvent:
    """Every event (status changes, phases, checkpoints, runner messages) goes through here,
    so this is where open streams are told: delivered when the caller commits."""
    ev = JobEvent(job_id=job.id, attempt=job.attempt, level=level, type=type, message=message, data=data)
    session.add(ev)
    notify(session, JOB_CHANGED, job.id)
    return ev


def set_job_status(
    session: Session,
    job_id: str,
    new: JobStatus | str,
    *,
    attempt: int | None = None,
    message: str | None = None,
    error: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    job: Job | None = None,
) -> Job:
    """Move a job to `new` or raise IllegalTransition / StaleAttempt. Caller commits.

    Pass `job` only when the caller already holds the row lock.
    """
    new = JobStatus(new)
    job = job or lock_job(session, job_id)
    check_fence(job, attempt)
    old = JobStatus(job.status)
    if not can_transition(old, new):
        raise IllegalTransition(
            f"Job {job.id} cannot go from {old.value} to {new.value}", param="fine_tuning_job_id"
        )
    now = utcnow()
    job.status = new.value
    if new is JobStatus.RUNNING and job.started_at is None:
        job.started_at = now
    if new is not JobStatus.RUNNING and new not in (JobStatus.PAUSING, JobStatus.CANCELLING):
        job.phase = None
    if is_terminal(new) or new is JobStatus.PAUSED or new is JobStatus.QUEUED:
        job.worker_id = None
        job.lease_expires_at = None
    if is_terminal(new):
        job.finished_at = now
    if error is not None:
        job.error = error
    level = "error" if new is JobStatus.FAILED else "info"
    text = message or f"Job status changed from {old.value} to {new.value}"
    add_event(session, job, text, type="status", level=level, data={"from": old.value, "to": new.value, **(data or {})})
    if new is JobStatus.QUEUED or new is JobStatus.PAUSED or is_terminal(new):
        # A job to place, or a slot freed: wake the planner when this commits.
        notify(session, PLAN, new.value)
    webhooks.job_status_changed(session, job, old.value, new.value)  # outbox rows, same transaction
    return job
