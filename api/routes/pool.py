"""GET /v1/pool: the worker pool as the caller's team may see it (the dashboard's Pool page).

Thin over core.services.pool; its response models live here because no other route uses
them. Other teams appear only as counts and anonymous labels (see the service)."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel
from sqlalchemy.orm import Session

from api.deps import Services, current_team, get_session, services
from api.schemas import unix
from core.models import Team
from core.services.pool import pool_view

router = APIRouter(tags=["system"])


class PoolWorkerObject(BaseModel):
    id: str
    hostname: str
    gpus: int
    gpu_name: str | None
    gpu_memory_gb: float | None
    slots: int
    used_slots: int
    running_job_ids: list[str]  # the caller's own jobs only
    other_running_jobs: int  # other teams' jobs on this worker, as a count
    last_heartbeat: int
    stale: bool


class TeamShareObject(BaseModel):
    label: str
    mine: bool
    share_target: float
    used: float
    slot_seconds: float
    running_jobs: int
    waiting_jobs: int


class QueueEntryObject(BaseModel):
    position: int
    job_id: str | None
    model: str | None
    suffix: str | None
    priority: int | None
    created_at: int | None
    others: int


class PoolObject(BaseModel):
    object: Literal["pool"] = "pool"
    workers: list[PoolWorkerObject]
    teams: list[TeamShareObject]
    queue: list[QueueEntryObject]
    waiting_total: int
    window_hours: float


@router.get("/v1/pool", response_model=PoolObject)
def pool(team: Team = Depends(current_team), session: Session = Depends(get_session), svc: Services = Depends(services)):
    view = pool_view(session, team.id, timedelta(seconds=svc.settings.worker_timeout_seconds))
    return PoolObject(
        workers=[PoolWorkerObject(**{**w.__dict__, "running_job_ids": w.my_running_job_ids, "last_heartbeat": unix(w.last_heartbeat)})
                 for w in view.workers],
        teams=[TeamShareObject(**t.__dict__) for t in view.teams],
        queue=[QueueEntryObject(**{**q.__dict__, "created_at": unix(q.created_at)}) for q in view.queue],
        waiting_total=view.waiting_total,
        window_hours=view.window_hours,
    )
