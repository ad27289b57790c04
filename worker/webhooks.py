"""The webhook delivery loop every worker runs beside its scheduler.

It reads the outbox (core.services.webhooks), never the other way round: a status change
only inserts rows, so a receiver that is slow, down or hanging can delay nothing but its
own deliveries. Each pass claims the due rows (a lease other workers respect), posts them
from a small thread pool with a short timeout, and records each outcome in its own
transaction: delivered, or due again after an exponential backoff until the retry window
(a day by default) is over. A worker that dies mid-send loses nothing: the lease runs out
and the row is due again, so a receiver may see an event twice (the `webhook-id` header is
the same on every attempt, for deduplication), never zero times.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
from sqlalchemy.engine import Engine

from core.config import Settings
from core.db import get_engine, session_scope
from core.services import webhooks

log = logging.getLogger(__name__)

SENDERS = 8  # concurrent POSTs per worker: a few hanging receivers cannot starve the rest

def lease_seconds(timeout: float) -> float:
    """How long a claim keeps other workers off a row: longer than one POST can take (httpx
    applies the timeout to connect, write and read separately) plus the write of its outcome;
    short, because it is also how late a dead worker's in-flight deliveries are picked up again."""
    return 3 * timeout + 2


def send(client: httpx.Client, due: webhooks.Due) -> tuple[bool, int | None, str | None]:
    """One attempt: (delivered, HTTP status, error). Any 2xx counts as delivered."""
    headers = webhooks.signed_headers(due.secret, due.event_id, due.payload)
    try:
        r = client.post(due.url, content=due.payload.encode(), headers=headers)
    except httpx.HTTPError as e:
        return False, None, f"{type(e).__name__}: {e}"
    ok = 200 <= r.status_code < 300
    return ok, r.status_code, None if ok else f"HTTP {r.status_code}: {r.text[:500]}"


class Deliverer:
    """Claims due deliveries and sends them; `run_once` is one pass (tests call it too)."""

    def __init__(self, settings: Settings, engine: Engine | None = None):
        self.settings = settings
        self.engine = engine or get_engine(settings.database_url)
        self.client = httpx.Client(timeout=settings.webhook_timeout_seconds, follow_redirects=False)
        self.pool = ThreadPoolExecutor(SENDERS, thread_name_prefix="webhook")
        self.in_flight = threading.Semaphore(SENDERS)

    def run_once(self) -> int:
        """Claim what there is room for and hand it to the senders; returns how many."""
        room = 0
        while room < SENDERS and self.in_flight.acquire(blocking=False):
            room += 1
        if room == 0:
            return 0
        lease = lease_seconds(self.settings.webhook_timeout_seconds)
        try:
            with session_scope(self.engine) as s:
                due = webhooks.claim_due(s, limit=room, lease_seconds=lease)
        except BaseException:
            for _ in range(room):
                self.in_flight.release()
            raise
        for _ in range(room - len(due)):
            self.in_flight.release()
        for d in due:
            self.pool.submit(self._deliver, d)
        return len(due)

    def _deliver(self, due: webhooks.Due) -> None:
        try:
            ok, code, error = send(self.client, due)
            with session_scope(self.engine) as s:
                webhooks.record_attempt(s, due.id, ok=ok, status_code=code, error=error,
                                        retry_seconds=self.settings.webhook_retry_seconds,
                                        backoff_base=self.settings.webhook_backoff_seconds)
            if not ok:
                log.info("webhook %s to %s failed: %s", due.event_id, due.url, error)
        except Exception:  # the lease brings the row back; keep the loop alive
            log.exception("webhook delivery %s failed in the worker", due.id)
        finally:
            self.in_flight.release()

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()


def start(settings: Settings, stop: threading.Event, engine: Engine | None = None) -> threading.Thread:
    """The loop as a daemon thread, until `stop` is set."""
    deliverer = Deliverer(settings, engine)

    def loop() -> None:
        try:
            while not stop.wait(settings.webhook_poll_seconds):
                try:
                    deliverer.run_once()
                except Exception:  # a database blip must not end deliveries
                    log.exception("webhook delivery pass failed")
        finally:
            deliverer.close()

    thread = threading.Thread(target=loop, daemon=True, name="webhooks")
    thread.start()
    return thread
