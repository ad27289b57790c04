"""The worker pool as SQL sees it: each worker process registers its shape (slots, GPUs)
and heartbeats; the scheduler and `GET /v1/workers` read these rows."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.models import Job, Worker, utcnow
from core.notify import PLAN, notify


def register_worker(
    session: Session,
    worker_id: str,
    hostname: str,
    *,
    slots: int,
    gpus: int = 0,
    gpu_name: str | None = None,
    gpu_memory_gb: float | None = None,
) -> Worker:
    w = session.get(Worker, worker_id) or Worker(id=worker_id)
    w.hostname, w.slots, w.gpus, w.gpu_name, w.gpu_memory_gb = hostname, slots, gpus, gpu_name, gpu_memory_gb
    w.running_job_ids, w.active = [], True
    w.started_at = w.last_heartbeat = utcnow()
    session.add(w)
    notify(session, PLAN, "worker")  # new slots: plan now, not at the next interval
    return w


def worker_heartbeat(session: Session, worker_id: str, running_job_ids: list[str]) -> None:
    w = session.get(Worker, worker_id)
    if w is None:
        return
    w.last_heartbeat = utcnow()
    w.running_job_ids = sorted(running_job_ids)
    if not w.active:  # back in the pool (it was only slow): its free slots count again
        notify(session, PLAN, "worker")
    w.active = True


def deregister_worker(session: Session, worker_id: str) -> None:
    w = session.get(Worker, worker_id)
    if w is not None:
        w.active = False
        w.running_job_ids = []


def retire_silent_workers(session: Session, now: datetime, timeout: timedelta) -> list[str]:
    """Mark workers silent for longer than `timeout` inactive (a SIGKILLed worker never
    deregisters), so the pool shows what is really there; a worker that was only slow
    becomes active again with its next heartbeat."""
    rows = session.scalars(
        select(Worker).where(Worker.active.is_(True), Worker.last_heartbeat < now - timeout).with_for_update(skip_locked=True)
    ).all()
    for w in rows:
        w.active = False
    return [w.id for w in rows]


def pool_as_seen_by(session: Session, team_id: str) -> list[tuple[Worker, list[str]]]:
    """Every worker with the ids of the caller's own jobs it runs; other teams' jobs are
    only counted (`len(worker.running_job_ids)`), so the pool view leaks no foreign job id."""
    workers = list(session.scalars(select(Worker).order_by(Worker.last_heartbeat.desc())))
    running = {j for w in workers for j in (w.running_job_ids or [])}
    own = set(session.scalars(select(Job.id).where(Job.id.in_(running), Job.team_id == team_id))) if running else set()
    return [(w, [j for j in (w.running_job_ids or []) if j in own]) for w in workers]
