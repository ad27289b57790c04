"""/v1/fine_tuning/jobs: create, list, retrieve, cancel / pause / resume, dry run.

Routes are thin: a service call, the commit, and only then the broker message.
"""

from __future__ import annotations

import re

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from sqlalchemy.orm import Session

from api.deps import Cursor, Services, current_team, get_session, services
from api.errors import COMMON, responses
from api.etag import conditional
from api.schemas import FineTuningJob, ListObject, ValidationReport, job_object, list_of
from core.errors import InvalidRequest
from core.jobrequest import JobCreateRequest
from core.models import Team
from core.services import fit, jobs
from core.services.scheduling import queue_info

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning jobs"], responses=responses(*COMMON))


def _commit(session: Session, job) -> FineTuningJob:
    """A queued job waits in SQL; the workers' scheduler dispatches it (fair share first)."""
    session.commit()
    return job_object(job)


@router.post("", response_model=FineTuningJob, responses=responses(404, 409, 413, 429))
def create(
    body: JobCreateRequest,
    idempotency_key: str | None = Header(None, alias="Idempotency-Key", max_length=255),
    team: Team = Depends(current_team),
    session: Session = Depends(get_session),
    svc: Services = Depends(services),
):
    job, created = jobs.create_job(session, svc.settings, team.id, body, idempotency_key=idempotency_key)
    if not created:
        return job_object(job)
    return _commit(session, job)


@router.post("/validate", response_model=ValidationReport, responses=responses(404, 413))
def validate(
    body: JobCreateRequest,
    team: Team = Depends(current_team),
    session: Session = Depends(get_session),
    svc: Services = Depends(services),
):
    """Dry run: every API-side check (the fit plan's refusal included), then a worker's token
    counts, then the plan with the tokens, steps and time estimate; nothing is queued."""
    spec = jobs.check_request(session, svc.settings, team.id, body)
    plan = fit.plan_job(session, svc.settings, spec)
    session.rollback()  # release the read transaction before waiting on a worker
    counts, warning = svc.dispatcher.dry_run(spec.model_dump(mode="json"), team.id)
    return ValidationReport(
        valid=True, spec=spec.model_dump(mode="json"), spec_hash=spec.hash(), token_counts=counts,
        warnings=[warning] if warning else [], plan=fit.validation_plan(session, spec, plan, counts),
    )


_METADATA_PARAM = re.compile(r"^metadata\[(.{1,64})\]$", re.DOTALL)


def _metadata_filter(request: Request) -> dict[str, str]:
    """OpenAI's `?metadata[k]=v` (deep-object style, which FastAPI cannot declare)."""
    found: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if m := _METADATA_PARAM.match(name):
            if len(value) > 512:
                raise InvalidRequest(f"{name}: a metadata value is at most 512 characters", param=name)
            found[m.group(1)] = value
    return found


@router.get(
    "",
    response_model=ListObject[FineTuningJob],
    responses={304: {"description": "Not modified (If-None-Match)"}},
)
def list_jobs(
    request: Request,
    response: Response,
    after: Cursor = None,
    limit: int = Query(20, ge=1, le=100),
    team: Team = Depends(current_team),
    session: Session = Depends(get_session),
):
    """`?metadata[k]=v` (repeatable) lists only the jobs whose metadata has every pair given."""
    metadata = _metadata_filter(request)
    page = jobs.list_jobs(session, team.id, after=after, limit=limit, metadata=metadata)
    versions = [jobs.job_version(j) for j in page.data]
    if unchanged := conditional(request, response, team.id, after, limit, sorted(metadata.items()), page.has_more, versions):
        return unchanged
    return list_of([job_object(j) for j in page.data], page.has_more)


@router.get("/{job_id}", response_model=FineTuningJob, responses={**responses(404), 304: {"description": "Not modified (If-None-Match)"}})
def retrieve(
    job_id: str,
    request: Request,
    response: Response,
    team: Team = Depends(current_team),
    session: Session = Depends(get_session),
):
    job = jobs.get_job(session, team.id, job_id)
    queue = queue_info(job)  # stored by the planner each tick: O(1) however long the queue
    if unchanged := conditional(request, response, jobs.job_version(job), queue):
        return unchanged
    return job_object(job, queue)


@router.post("/{job_id}/cancel", response_model=FineTuningJob, responses=responses(404, 409, 413))
def cancel(job_id: str, team: Team = Depends(current_team), session: Session = Depends(get_session)):
    job = jobs.cancel_job(session, team.id, job_id)
    session.commit()
    return job_object(job)


@router.post("/{job_id}/pause", response_model=FineTuningJob, responses=responses(404, 409, 413))
def pause(job_id: str, team: Team = Depends(current_team), session: Session = Depends(get_session)):
    job = jobs.pause_job(session, team.id, job_id)
    session.commit()
    return job_object(job)


@router.post("/{job_id}/resume", response_model=FineTuningJob, responses=responses(404, 409, 413, 429))
def resume(job_id: str, team: Team = Depends(current_team), session: Session = Depends(get_session)):
    return _commit(session, jobs.resume_job(session, team.id, job_id))
