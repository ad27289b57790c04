"""Change notifications: a writer says "this changed", every process that waits hears it.

Why: waiting by polling SQL costs a query (and, for a held session, a pooled connection) per
waiter per interval. Instead writers call `notify(session, channel, payload)` inside their
transaction and each process keeps ONE listening connection (`Listener`) that fans the news
out to any number of in-process waiters (SSE streams, the planner loop).

On PostgreSQL this is LISTEN/NOTIFY: the server delivers a NOTIFY only when the writing
transaction commits, so nobody is told about a change that rolled back, and a notification
always follows the data it announces. Delivery is best effort (a listener that reconnects may
have missed some), so waiters always keep a timeout as a safety net and re-read SQL when woken;
on a reconnect the listener wakes every subscriber with `payload=None` ("something may have
changed"). On SQLite (embedded: one machine, two processes) there is no cross-process channel:
`notify` is a no-op and waiters fall back to their timeout.

Channels are constants here so writers and readers cannot disagree on a name.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import contextmanager

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

#: A job's status, phase, events, metrics or checkpoints changed; payload: the job id.
JOB_CHANGED = "tuneforge_job"
#: Something the planner cares about happened (job created/finished/cancelled, worker joined);
#: payload: a short reason, for logs only.
PLAN = "tuneforge_plan"

#: PostgreSQL refuses NOTIFY payloads of 8000 bytes or more; ours are ids and short words.
MAX_PAYLOAD = 7900

Callback = Callable[[str | None], None]


def is_postgres(url_or_session: str | Session) -> bool:
    if isinstance(url_or_session, Session):
        return url_or_session.get_bind().dialect.name == "postgresql"
    return make_url(url_or_session).get_backend_name() == "postgresql"


def notify(session: Session, channel: str, payload: str = "") -> None:
    """Announce a change made in `session`'s transaction; delivered at its commit (PostgreSQL).

    A no-op on other databases. PostgreSQL folds identical (channel, payload) pairs of one
    transaction into one delivery, so calling this once per write is cheap.
    """
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"notification payload too long ({len(payload)} bytes)")
    if is_postgres(session):
        session.execute(text("SELECT pg_notify(:channel, :payload)"), {"channel": channel, "payload": payload})


def psycopg_dsn(database_url: str) -> str:
    """SQLAlchemy's `postgresql+psycopg://...` as the plain libpq URL psycopg connects to."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


class Listener:
    """One LISTEN connection per process, in a daemon thread, fanning out to subscribers.

    Callbacks run on the listener thread and must be quick and non-blocking (set an event,
    `loop.call_soon_threadsafe`). On SQLite the listener never starts a thread and
    subscribers are only woken by their own timeouts.
    """

    def __init__(self, database_url: str, channels: tuple[str, ...] = (JOB_CHANGED, PLAN), poll_seconds: float = 1.0):
        self.database_url = database_url
        self.channels = channels
        self.poll_seconds = poll_seconds
        self.enabled = is_postgres(database_url)
        self._subscribers: dict[str, set[Callback]] = defaultdict(set)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: set once the first LISTEN is in place (tests wait on it before notifying).
        self.listening = threading.Event()

    # -- subscription -------------------------------------------------------------------
    def subscribe(self, channel: str, callback: Callback) -> Callable[[], None]:
        """Call `callback(payload)` for every notification on `channel`; returns an unsubscribe."""
        if channel not in self.channels:
            raise ValueError(f"listener does not listen on {channel!r}")
        with self._lock:
            self._subscribers[channel].add(callback)

        def unsubscribe() -> None:
            with self._lock:
                self._subscribers[channel].discard(callback)

        return unsubscribe

    @contextmanager
    def waiter(self, channel: str, match: Callable[[str | None], bool] = lambda _p: True):
        """A `threading.Event` set by matching notifications (and by reconnects), for blocking loops."""
        event = threading.Event()

        def on_notify(payload: str | None) -> None:
            if payload is None or match(payload):
                event.set()

        unsubscribe = self.subscribe(channel, on_notify)
        try:
            yield event
        finally:
            unsubscribe()

    def async_waiter(self, channel: str, match: Callable[[str | None], bool] = lambda _p: True) -> AsyncWaiter:
        """An asyncio-side waiter for code running in an event loop (SSE streams)."""
        return AsyncWaiter(self, channel, match)

    @property
    def subscriber_count(self) -> int:
        with self._lock:
            return sum(len(s) for s in self._subscribers.values())

    def _dispatch(self, channel: str, payload: str | None) -> None:
        with self._lock:
            callbacks = list(self._subscribers.get(channel, ()))
        for callback in callbacks:
            try:
                callback(payload)
            except Exception:  # one broken waiter must not starve the others
                log.exception("notification callback failed")

    def _dispatch_all(self) -> None:
        for channel in self.channels:
            self._dispatch(channel, None)

    # -- the listening thread -----------------------------------------------------------
    def start(self) -> Listener:
        if self.enabled and self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="tuneforge-listener", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.listening.clear()

    def _run(self) -> None:
        import psycopg

        backoff = 0.2
        first = True
        while not self._stop.is_set():
            try:
                with psycopg.connect(psycopg_dsn(self.database_url), autocommit=True, connect_timeout=5) as conn:
                    for channel in self.channels:
                        conn.execute(f'LISTEN "{channel}"')
                    self.listening.set()
                    if not first:  # we may have missed notifications while away
                        self._dispatch_all()
                    first = False
                    backoff = 0.2
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=self.poll_seconds):
                            self._dispatch(note.channel, note.payload)
                            if self._stop.is_set():
                                break
            except Exception as exc:  # connection lost: retry with backoff, waiters time out meanwhile
                self.listening.clear()
                if self._stop.is_set():
                    return
                log.warning("notification listener reconnecting after: %s", exc)
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)


class AsyncWaiter:
    """Bridges the listener thread to one asyncio task: `await waiter.wait(timeout)`.

    Use as a context manager so the subscription is dropped when the task ends.
    """

    def __init__(self, listener: Listener, channel: str, match: Callable[[str | None], bool]):
        self._listener = listener
        self._channel = channel
        self._match = match
        self._event = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._unsubscribe: Callable[[], None] | None = None

    def __enter__(self) -> AsyncWaiter:
        self._loop = asyncio.get_running_loop()

        def on_notify(payload: str | None) -> None:
            if payload is None or self._match(payload):
                self._loop.call_soon_threadsafe(self._event.set)

        self._unsubscribe = self._listener.subscribe(self._channel, on_notify)
        return self

    def __exit__(self, *exc) -> None:
        if self._unsubscribe:
            self._unsubscribe()

    async def wait(self, timeout: float) -> bool:
        """True when woken by a notification, False on timeout; clears for the next wait."""
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
            return True
        except TimeoutError:
            return False
        finally:
            self._event.clear()
