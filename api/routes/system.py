"""Operational endpoints: worker pool, liveness, readiness."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.orm import Session

from api.deps import Services, current_team, get_session, services
from api.errors import responses
from api.schemas import ListObject, WorkerObject, list_of, worker_object
from core.models import Team
from core.services.workers import pool_as_seen_by

router = APIRouter(tags=["system"])


@router.get("/v1/workers", response_model=ListObject[WorkerObject], responses=responses(400, 401))
def list_workers(team: Team = Depends(current_team), session: Session = Depends(get_session)):
    return list_of([worker_object(w, own) for w, own in pool_as_seen_by(session, team.id)])


@router.get("/healthz")
def healthz():
    """The process answers; says nothing about its dependencies (that is /readyz)."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "The database or the broker cannot be reached"}})
def readyz(svc: Services = Depends(services)):
    checks = {"database": False, "broker": False}
    try:
        with svc.sessions() as session:
            session.execute(text("SELECT 1"))
        checks["database"] = True
    except Exception:
        pass
    checks["broker"] = svc.dispatcher.broker_reachable()
    ok = all(checks.values())
    return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503)
