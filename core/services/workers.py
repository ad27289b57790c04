"""The worker pool as SQL sees it: each worker process registers its shape (slots, GPUs)
and heartbeats; the scheduler and `GET /v1/workers` read these rows."""

from __future__ import annotations

from sqlalchemy.orm import Session

from core.models import Worker, utcnow


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
    return w


def worker_heartbeat(session: Session, worker_id: str, running_job_ids: list[str]) -> None:
    w = session.get(Worker, worker_id)
    if w is None:
        return
    w.last_heartbeat = utcnow()
    w.running_job_ids = sorted(running_job_ids)
    w.active = True


def deregister_worker(session: Session, worker_id: str) -> None:
    w = session.get(Worker, worker_id)
    if w is not None:
        w.active = False
        w.running_job_ids = []
