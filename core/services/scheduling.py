"""Scheduling as the rest of the service sees it: the plan (core.services.planner), what a
waiting job's row says about its turn, and the reconciler that repairs what a lost broker
message or a dead worker left behind.

The assignment is written to the job row (worker_id + dispatched_at) in the same
transaction that decides it, and only then sent to that worker's queue. A queued job whose
dispatch was never claimed (the broker lost it) is re-dispatched by `reconcile`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.models import Job, utcnow
from core.services.planner import Assignment, PlanCache, Tick, job_fits, plan, plan_tick, try_planner_lock
from core.states import ACTIVE, JobStatus

__all__ = ["Assignment", "PlanCache", "QueueInfo", "ReconcileResult", "Tick", "job_fits", "plan", "plan_tick",
           "queue_info", "reconcile", "try_planner_lock"]


@dataclass
class QueueInfo:
    position: int | None
    reason: str | None
    estimated_start: datetime | None = None
    details: dict = field(default_factory=dict)


def queue_info(job: Job) -> QueueInfo:
    """Where a waiting job stands, from its own row: the planner wrote position, reason and
    expected start at its last tick, so a GET costs nothing however long the queue is."""
    if job.status != JobStatus.QUEUED.value:
        return QueueInfo(None, None)
    if job.worker_id is not None:
        return QueueInfo(0, "dispatched to a worker, starting")
    return QueueInfo(job.queue_position, job.queue_reason or "waiting for the scheduler", job.estimated_start)


@dataclass
class ReconcileResult:
    redispatched: list[str] = field(default_factory=list)
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    retired_workers: list[str] = field(default_factory=list)
    skipped: bool = False  # another process holds the planner lock and reconciles this tick


def reconcile(
    session: Session,
    now: datetime | None = None,
    dispatch_timeout: timedelta = timedelta(seconds=30),
    worker_timeout: timedelta | None = None,
) -> ReconcileResult:
    """Repair what a lost broker message or a dead worker left behind; SQL is the truth.

    - queued + dispatched but never claimed within `dispatch_timeout`: the message was lost
      (Redis flushed/restarted) or its worker died; forget the assignment so `plan` sends it
      again (a late duplicate is harmless: claims are conditional).
    - running/pausing/cancelling whose lease expired: the runner is gone. Re-queue as a new
      attempt (it resumes from its newest checkpoint), or fail once attempts are used up.
    - with `worker_timeout`: workers silent for longer are marked inactive.

    One process at a time (the planner's advisory lock): the others skip.
    """
    from core.services.lifecycle import set_job_status
    from core.services.workers import retire_silent_workers

    now = now or utcnow()
    out = ReconcileResult()
    if not try_planner_lock(session):
        out.skipped = True
        return out
    if worker_timeout is not None:
        out.retired_workers = retire_silent_workers(session, now, worker_timeout)
    stale_dispatch = session.scalars(
        select(Job).where(
            Job.held_worker_id.is_not(None),  # = holds a slot: the small partial index, not the queue
            Job.status == JobStatus.QUEUED.value,
            Job.worker_id.is_not(None),
            Job.dispatched_at < now - dispatch_timeout,
        ).with_for_update(skip_locked=True)
    ).all()
    for job in stale_dispatch:
        job.worker_id = None
        job.dispatched_at = None
        out.redispatched.append(job.id)
    expired = session.scalars(
        select(Job).where(
            Job.held_worker_id.is_not(None),
            Job.status.in_([s.value for s in ACTIVE]),
            Job.lease_expires_at < now,
        ).with_for_update(skip_locked=True)
    ).all()
    for job in expired:
        who = job.worker_id
        if job.status == JobStatus.CANCELLING.value:
            set_job_status(session, job.id, JobStatus.CANCELLED, job=job,
                           message=f"Worker {who} stopped heartbeating while cancelling; job cancelled")
        elif job.attempt >= job.max_attempts:
            set_job_status(
                session, job.id, JobStatus.FAILED, job=job,
                message=f"Worker {who} was lost on attempt {job.attempt} of {job.max_attempts}; giving up",
                error={"code": "max_attempts_exceeded", "message": f"the job's worker was lost {job.attempt} times", "param": None},
            )
            out.failed.append(job.id)
        else:
            target = JobStatus.PAUSED if job.status == JobStatus.PAUSING.value else JobStatus.QUEUED
            set_job_status(session, job.id, target, job=job,
                           message=f"Lease of worker {who} expired on attempt {job.attempt}; re-queued to resume from its newest checkpoint")
            job.dispatched_at = None
            out.requeued.append(job.id)
    return out
