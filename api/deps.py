"""Request dependencies: the app's shared parts (set up once in create_app), a database
session per request, and the caller's team from its API key."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query, Request
from sqlalchemy.orm import Session, sessionmaker

from api.dispatch import Dispatcher
from api.guard import bearer_key
from core.config import Settings
from core.models import Team
from core.services.auth import authenticate


# `after=`: the id of the last item already seen. Ids are short; a longer value is no id.
Cursor = Annotated[str | None, Query(max_length=64, description="The id of the last item already seen")]


@dataclass
class Services:
    settings: Settings
    sessions: sessionmaker[Session]
    dispatcher: Dispatcher
    store: object


def services(request: Request) -> Services:
    return request.app.state.services


def get_session(svc: Services = Depends(services)) -> Iterator[Session]:
    """Routes commit explicitly (before dispatching); anything uncommitted is rolled back."""
    session = svc.sessions()
    try:
        yield session
    finally:
        session.close()


def current_team(request: Request, session: Session = Depends(get_session)) -> Team:
    """The caller's team; requests with a body were already authenticated by
    api.guard.RequestGuard (before their body was read), which left the team id here."""
    team_id = getattr(request.state, "team_id", None)
    team = session.get(Team, team_id) if team_id else None
    return team or authenticate(session, bearer_key(request.headers))
