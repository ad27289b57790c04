"""Request dependencies: the app's shared parts (set up once in create_app), a database
session per request, and the caller's team from its API key."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from fastapi import Depends, Request
from sqlalchemy.orm import Session, sessionmaker

from api.dispatch import Dispatcher
from core.config import Settings
from core.models import Team
from core.services.auth import authenticate


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


def bearer_key(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    return key.strip() if scheme.lower() == "bearer" and key.strip() else None


def current_team(request: Request, session: Session = Depends(get_session)) -> Team:
    return authenticate(session, bearer_key(request))
