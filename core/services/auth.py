"""Teams and API keys.

A key is shown once, at creation; only its SHA-256 is stored, so a leaked database does not
leak usable keys. SHA-256 (not a slow password hash) is enough because keys are 256-bit
random tokens, not guessable passwords, and every request has to look one up.
"""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.errors import Conflict, Unauthorized
from core.models import ApiKey, Team

KEY_PREFIX = "tf-"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_team(
    session: Session,
    name: str,
    *,
    max_queued_jobs: int | None = None,
    max_running_jobs: int | None = None,
    share: float = 1.0,
) -> Team:
    if session.execute(select(Team.id).where(Team.name == name)).first() is not None:
        raise Conflict(f"A team named {name!r} already exists", param="name")
    team = Team(name=name, max_queued_jobs=max_queued_jobs, max_running_jobs=max_running_jobs, share=share)
    session.add(team)
    session.flush()
    return team


def create_api_key(session: Session, team_id: str, name: str | None = None) -> tuple[ApiKey, str]:
    """Returns the row and the plaintext key; the plaintext is not kept anywhere."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(team_id=team_id, name=name, prefix=key[:10], key_hash=hash_key(key))
    session.add(row)
    session.flush()
    return row, key


def authenticate(session: Session, key: str | None) -> Team:
    if not key:
        raise Unauthorized(
            "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.", code="missing_api_key"
        )
    row = session.execute(
        select(ApiKey).where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))
    ).scalar_one_or_none()
    if row is None:
        raise Unauthorized("Incorrect API key provided.")
    return row.team
