"""What a finished (or running) job has produced, and expiring links to download it.

Links are signed by the artifact store (core.storage); the API only hands them out to the
job's own team, so the signature is the whole authorisation of the download itself.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.config import Settings
from core.errors import NotFound
from core.models import Artifact
from core.services.jobs import get_job


def list_artifacts(session: Session, team_id: str, job_id: str) -> list[Artifact]:
    get_job(session, team_id, job_id)
    return list(session.scalars(select(Artifact).where(Artifact.job_id == job_id).order_by(Artifact.name)))


def artifact_link(session: Session, settings: Settings, store, team_id: str, job_id: str, name: str) -> tuple[str, datetime]:
    get_job(session, team_id, job_id)
    art = session.scalars(select(Artifact).where(Artifact.job_id == job_id, Artifact.name == name)).one_or_none()
    if art is None:
        raise NotFound(f"Job {job_id} has no artifact named {name!r}", param="name")
    return store.signed_url(art.storage_key, settings.signed_url_ttl_seconds, art.name.rsplit("/", 1)[-1])
