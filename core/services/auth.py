"""Teams and API keys.

A key is shown once, at creation; only its SHA-256 is stored, so a leaked database does not
leak usable keys. SHA-256 (not a slow password hash) is enough because keys are 256-bit
random tokens, not guessable passwords, and every request has to look one up.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from core.errors import Conflict, NotFound, Unauthorized
from core.models import ApiKey, Team, utcnow

KEY_PREFIX = "tf-"
# last_used_at is written at most this often per key: enough to tell a key in use from a
# forgotten one, without a write on every request.
LAST_USED_RESOLUTION = timedelta(minutes=1)


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
    _touch(session, row)
    return row.team


def _touch(session: Session, row: ApiKey) -> None:
    """Record the key's use. Committed here, on its own, because most requests (reads) never
    commit; at authentication nothing else is pending in the request's session yet."""
    now = utcnow()
    stale = or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at < now - LAST_USED_RESOLUTION)
    if session.execute(update(ApiKey).where(ApiKey.id == row.id, stale).values(last_used_at=now)
                       .execution_options(synchronize_session=False)).rowcount:
        session.commit()


def find_team(session: Session, name_or_id: str) -> Team:
    team = session.scalars(select(Team).where(or_(Team.name == name_or_id, Team.id == name_or_id))).first()
    if team is None:
        raise NotFound(f"no team named {name_or_id!r}", param="team")
    return team


def list_keys(session: Session, team_id: str) -> list[ApiKey]:
    """A team's keys, oldest first; callers show the prefix and times, never anything else."""
    return list(session.scalars(select(ApiKey).where(ApiKey.team_id == team_id).order_by(ApiKey.created_at, ApiKey.id)))


def revoke_key(session: Session, key_id: str) -> ApiKey:
    """The key stops working with the next request (every request looks its hash up).
    Revoking twice keeps the first time."""
    row = session.get(ApiKey, key_id)
    if row is None:
        raise NotFound(f"no API key with id {key_id!r}", param="key_id")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.flush()
    return row
