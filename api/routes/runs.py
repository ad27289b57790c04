"""What a job's run produces: events, checkpoints, the metric series, artifacts, and a
server-sent-event stream of all of them until the job ends."""

from __future__ import annotations

import asyncio
import json
from typing import Literal

from fastapi import APIRouter, Depends, Query
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session
from sse_starlette.sse import EventSourceResponse

from api.deps import Cursor, Services, current_team, get_session, services
from api.errors import COMMON, responses
from api.schemas import (
    ArtifactObject,
    CheckpointObject,
    JobEventObject,
    ListObject,
    MetricSeries,
    SignedLink,
    artifact_object,
    checkpoint_object,
    event_object,
    job_object,
    list_of,
    metric_point,
    unix,
)
from core.models import Team
from core.services import artifacts, jobs
from core.spec import MAX_STEPS
from core.states import is_terminal

router = APIRouter(prefix="/v1/fine_tuning/jobs/{job_id}", tags=["fine-tuning runs"], responses=responses(*COMMON, 404))
STREAM_POLL_SECONDS = 1.0


@router.get("/events", response_model=ListObject[JobEventObject])
def list_events(
    job_id: str,
    after: Cursor = None,
    limit: int = Query(20, ge=1, le=100),
    order: Literal["asc", "desc"] = Query("desc", description="desc (OpenAI's order) or asc, for tailing"),
    team: Team = Depends(current_team),
    session: Session = Depends(get_session),
):
    page = jobs.list_events(session, team.id, job_id, after=after, limit=limit, newest_first=order == "desc")
    return list_of([event_object(e) for e in page.data], page.has_more)


@router.get("/checkpoints", response_model=ListObject[CheckpointObject])
def list_checkpoints(
    job_id: str,
    after: Cursor = None,
    limit: int = Query(10, ge=1, le=100),
    team: Team = Depends(current_team),
    session: Session = Depends(get_session),
):
    job = jobs.get_job(session, team.id, job_id)
    page = jobs.list_checkpoints(session, team.id, job_id, after=after, limit=limit)
    return list_of([checkpoint_object(c, job) for c in page.data], page.has_more)


@router.get("/metrics", response_model=MetricSeries)
def metrics(
    job_id: str,
    from_step: int | None = Query(None, ge=0, le=MAX_STEPS),
    to_step: int | None = Query(None, ge=0, le=MAX_STEPS),
    max_points: int = Query(500, ge=1, le=jobs.MAX_POINTS),
    team: Team = Depends(current_team),
    session: Session = Depends(get_session),
):
    points = jobs.metric_series(session, team.id, job_id, from_step=from_step, to_step=to_step, max_points=max_points)
    return MetricSeries(fine_tuning_job_id=job_id, data=[metric_point(m) for m in points])


@router.get("/artifacts", response_model=ListObject[ArtifactObject])
def list_artifacts(job_id: str, team: Team = Depends(current_team), session: Session = Depends(get_session)):
    return list_of([artifact_object(a) for a in artifacts.list_artifacts(session, team.id, job_id)])


@router.get("/artifacts/{name:path}", response_model=SignedLink)
def artifact_link(
    job_id: str, name: str, team: Team = Depends(current_team), session: Session = Depends(get_session), svc: Services = Depends(services)
):
    url, expires_at = artifacts.artifact_link(session, svc.settings, svc.store, team.id, job_id, name)
    return SignedLink(url=url, expires_at=expires_at if isinstance(expires_at, int) else unix(expires_at))


@router.get("/stream", response_class=EventSourceResponse, responses={200: {"content": {"text/event-stream": {}}, "description": "Server-sent events"}})
async def stream(job_id: str, team: Team = Depends(current_team), svc: Services = Depends(services)):
    """`status` whenever status/phase/step change, `event` per new event, `metrics` per new
    point; the stream ends after the job reaches a terminal status."""
    team_id = team.id

    def snapshot(after_event: int | None, after_step: int | None):
        with svc.sessions() as session:
            job = jobs.get_job(session, team_id, job_id)
            events = jobs.list_events(session, team_id, job_id, after=None if after_event is None else str(after_event), limit=100, newest_first=False).data
            points = jobs.metric_series(session, team_id, job_id, from_step=None if after_step is None else after_step + 1, max_points=jobs.MAX_POINTS)
            return job_object(job), events, points

    await run_in_threadpool(snapshot, None, None)  # 404 before the stream starts

    async def gen():
        last_event = last_step = None
        last_state = None
        while True:
            job, events, points = await run_in_threadpool(snapshot, last_event, last_step)
            for ev in events:
                last_event = ev.id
                yield {"event": "event", "data": event_object(ev).model_dump_json()}
            for p in points:
                last_step = p.step
                yield {"event": "metrics", "data": metric_point(p).model_dump_json()}
            state = (job.status, job.phase, job.step)
            if state != last_state:
                last_state = state
                yield {"event": "status", "data": json.dumps({"id": job.id, "status": job.status, "phase": job.phase, "step": job.step, "total_steps": job.total_steps})}
            if is_terminal(job.status) and len(events) < 100:
                return
            await asyncio.sleep(STREAM_POLL_SECONDS)

    return EventSourceResponse(gen())
