"""Server-sent-event streams of a job that hold no database connection while they wait.

Why: a stream spends nearly all its life waiting for the next event. If it held a session
(or polled SQL every second) a few dozen open dashboards would drain the connection pool
and stall every other request. Instead each stream subscribes to the process's one
`core.notify.Listener` and sleeps until the runner's commit announces a change to its job
(JOB_CHANGED), or until a safety-net timeout; only then does it read, with a short session
of its own. Streams of one job woken by the same notification share one read
(`JobStreams.read` coalesces identical in-flight reads), so a fan-out to hundreds of
dashboards costs one set of queries and one rendering.

Every message carries an SSE `id`: the stream's cursor (newest event id sent, newest metric
step sent), so a client that reconnects with `Last-Event-ID` (browsers' EventSource do this
by themselves) resumes where it left off instead of receiving the history again.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session, sessionmaker

from api.deps import Services, bearer_key, services
from api.schemas import event_object, metric_point
from core.errors import InvalidRequest
from core.notify import JOB_CHANGED, AsyncWaiter, Listener
from core.services import jobs
from core.services.auth import authenticate
from core.states import is_terminal

#: Events read per wake-up; a backlog larger than this is sent in several reads, without waiting.
BATCH = 100
#: With notifications (PostgreSQL) the timeout is only a safety net for a lost one.
SAFETY_NET_SECONDS = 15.0
#: Without them (SQLite, embedded) the stream polls.
POLL_SECONDS = 1.0
_MAX_CURSOR = 2**63 - 1


@dataclass(frozen=True)
class Cursor:
    """What a stream has sent: the newest event id and the newest metric step (None: nothing)."""

    event: int | None = None
    step: int | None = None

    def __str__(self) -> str:
        return f"{'' if self.event is None else self.event},{'' if self.step is None else self.step}"

    @classmethod
    def parse(cls, raw: str | None) -> Cursor:
        if not raw or not raw.strip():
            return cls()
        try:
            event, step = (None if not p.strip() else int(p) for p in raw.split(","))
        except ValueError:
            raise InvalidRequest(
                f"Last-Event-ID {raw[:64]!r} is not an id this stream sent (expected 'EVENT,STEP')", param="Last-Event-ID"
            ) from None
        if any(v is not None and not 0 <= v <= _MAX_CURSOR for v in (event, step)):
            raise InvalidRequest("Last-Event-ID is out of range", param="Last-Event-ID")
        return cls(event, step)


@dataclass(frozen=True)
class Batch:
    """One read of what is new for a cursor, already rendered as SSE messages."""

    messages: list[dict]
    cursor: Cursor
    state: tuple
    status: str
    more: bool  # a full batch of events: more are waiting
    terminal: bool


class JobStreams:
    """The streams of one API process: one listener, coalesced short-session reads."""

    def __init__(self, sessions: sessionmaker[Session], listener: Listener):
        self.sessions = sessions
        self.listener = listener
        self._inflight: dict[tuple, asyncio.Future] = {}

    @property
    def wait_seconds(self) -> float:
        return SAFETY_NET_SECONDS if self.listener.enabled else POLL_SECONDS

    def _read(self, team_id: str, job_id: str, cursor: Cursor) -> Batch:
        with self.sessions() as session:
            job = jobs.get_job(session, team_id, job_id)
            after = None if cursor.event is None else str(cursor.event)
            events = jobs.list_events(session, team_id, job_id, after=after, limit=BATCH, newest_first=False).data
            from_step = None if cursor.step is None else cursor.step + 1
            points = jobs.metric_series(session, team_id, job_id, from_step=from_step, max_points=jobs.MAX_POINTS)
            messages = []
            for ev in events:
                cursor = Cursor(ev.id, cursor.step)
                messages.append({"event": "event", "id": str(cursor), "data": event_object(ev).model_dump_json()})
            for p in points:
                cursor = Cursor(cursor.event, p.step)
                messages.append({"event": "metrics", "id": str(cursor), "data": metric_point(p).model_dump_json()})
            status = {"id": job.id, "status": job.status, "phase": job.phase, "step": job.step, "total_steps": job.total_steps}
            more = len(events) == BATCH
            return Batch(messages, cursor, (job.status, job.phase, job.step), json.dumps(status), more, is_terminal(job.status) and not more)

    async def read(self, team_id: str, job_id: str, cursor: Cursor) -> Batch:
        """Identical reads in flight at once (streams of one job woken together) run once."""
        key = (team_id, job_id, cursor)
        future = self._inflight.get(key)
        if future is None:
            future = asyncio.ensure_future(run_in_threadpool(self._read, team_id, job_id, cursor))
            self._inflight[key] = future
            future.add_done_callback(lambda _f: self._inflight.pop(key, None))
        return await asyncio.shield(future)

    async def open(self, team_id: str, job_id: str, cursor: Cursor) -> AsyncIterator[dict]:
        """Subscribe, then read once (NotFound surfaces here, before the response starts);
        subscribing first means a change committed during that read still wakes the stream."""
        waiter = self.listener.async_waiter(JOB_CHANGED, match=lambda payload: payload == job_id).__enter__()
        try:
            first = await self.read(team_id, job_id, cursor)
        except BaseException:
            waiter.__exit__(None, None, None)
            raise
        return self._follow(waiter, team_id, job_id, first)

    async def _follow(self, waiter: AsyncWaiter, team_id: str, job_id: str, batch: Batch) -> AsyncIterator[dict]:
        last_state = None
        try:
            while True:
                for message in batch.messages:
                    yield message
                if batch.state != last_state:
                    last_state = batch.state
                    yield {"event": "status", "id": str(batch.cursor), "data": batch.status}
                if batch.terminal:
                    return
                if not batch.more:
                    await waiter.wait(self.wait_seconds)
                batch = await self.read(team_id, job_id, batch.cursor)
        finally:
            waiter.__exit__(None, None, None)


async def job_streams(request: Request) -> JobStreams:
    return request.app.state.streams


def stream_team_id(request: Request, svc: Services = Depends(services)) -> str:
    """The caller's team, checked in a session closed at once. A session kept from the auth
    until the stream starts would hold a pooled connection across a thread hand-off, and
    with many streams opening together the holders starve the threads that would release
    them (the pool then times out)."""
    with svc.sessions() as session:
        return authenticate(session, bearer_key(request.headers)).id
