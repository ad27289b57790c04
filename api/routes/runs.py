"""What a job's run produces: events, checkpoints, the metric series, artifacts, and a
server-sent-event stream of all of them until the job ends."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from sqlalchemy.orm import Session
from sse_starlette.sse import EventSourceResponse

from api.deps import Cursor, Services, current_team, get_session, services
from api.errors import COMMON, responses
from api.etag import conditional
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
    list_of,
    metric_point,
    unix,
)
from api.streams import Cursor as StreamCursor
from api.streams import JobStreams, job_streams, stream_team_id
from core.models import Team
from core.services import artifacts, jobs
from core.spec import MAX_STEPS

router = APIRouter(prefix="/v1/fine_tuning/jobs/{job_id}", tags=["fine-tuning runs"], responses=responses(*COMMON, 404))


NOT_MODIFIED = {304: {"description": "Not modified (If-None-Match)"}}


@router.get("/events", response_model=ListObject[JobEventObject], responses=NOT_MODIFIED)
def list_events(
    job_id: str,
    request: Request,
    response: Response,
    after: Cursor = None,
    limit: int = Query(20, ge=1, le=100),
    order: Literal["asc", "desc"] = Query("desc", description="desc (OpenAI's order) or asc, for tailing"),
    team: Team = Depends(current_team),
    session: Session = Depends(get_session),
):
    version = jobs.events_version(session, team.id, job_id)
    if unchanged := conditional(request, response, version, after, limit, order):
        return unchanged
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


@router.get("/metrics", response_model=MetricSeries, responses=NOT_MODIFIED)
def metrics(
    job_id: str,
    request: Request,
    response: Response,
    from_step: int | None = Query(None, ge=0, le=MAX_STEPS),
    to_step: int | None = Query(None, ge=0, le=MAX_STEPS),
    max_points: int = Query(500, ge=1, le=jobs.MAX_POINTS),
    team: Team = Depends(current_team),
    session: Session = Depends(get_session),
):
    version = jobs.series_version(session, team.id, job_id)
    if unchanged := conditional(request, response, version, from_step, to_step, max_points):
        return unchanged
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
async def stream(
    job_id: str,
    team_id: str = Depends(stream_team_id),
    streams: JobStreams = Depends(job_streams),
    last_event_id: str | None = Header(None, alias="Last-Event-ID", max_length=64),
):
    """`status` whenever status/phase/step change, `event` per new event, `metrics` per new
    point; the stream ends after the job reaches a terminal status. Every message has an
    `id`; reconnecting with `Last-Event-ID` resumes after it. Holds no database connection
    while it waits (api.streams)."""
    return EventSourceResponse(await streams.open(team_id, job_id, StreamCursor.parse(last_event_id)))
