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
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
from sqlalchemy.engine import Engine

from core.config import Settings
from core.db import get_engine, session_scope
from core.egress import TargetRefused, check_target
from core.services import webhooks

log = logging.getLogger(__name__)

SENDERS = 8  # concurrent POSTs per worker
PRUNE_EVERY_SECONDS = 3600.0  # how often a worker drops finished deliveries past their retention
PER_ENDPOINT = 2  # of which one endpoint may hold at most this many: a hanging receiver cannot starve the rest


def lease_seconds(timeout: float) -> float:
    """How long a claim keeps other workers off a row: longer than one POST can take (httpx
    applies the timeout to connect, write and read separately) plus the write of its outcome;
    short, because it is also how late a dead worker's in-flight deliveries are picked up again."""
    return 3 * timeout + 2


def send(client: httpx.Client, due: webhooks.Due, allow_private: bool = False) -> tuple[bool, int | None, str | None]:
    """One attempt: (delivered, HTTP status, error). Any 2xx counts as delivered. The target is
    checked again here, not only at registration: its name may resolve elsewhere by now."""
    try:
        check_target(due.url, allow_private=allow_private)
    except TargetRefused as e:
        return False, None, f"not sent: {e}"
    headers = webhooks.signed_headers(due.secret, due.event_id, due.payload)
    try:
        r = client.post(due.url, content=due.payload.encode(), headers=headers)
    except httpx.HTTPError as e:
        return False, None, f"{type(e).__name__}: {e}"
    ok = 200 <= r.status_code < 300
    return ok, r.status_code, None if ok else f"HTTP {r.status_code}: {r.text[:500]}"


class Deliverer:
    """Claims due deliveries and sends them; `run_once` is one pass."""

    def __init__(self, settings: Settings, engine: Engine | None = None):
        self.settings = settings
        self.engine = engine or get_engine(settings.database_url)
        self.client = httpx.Client(timeout=settings.webhook_timeout_seconds, follow_redirects=False)
        self.pool = ThreadPoolExecutor(SENDERS, thread_name_prefix="webhook")
        self.free = threading.Semaphore(SENDERS)
        self.lock = threading.Lock()
        self.busy: Counter[str] = Counter()  # endpoint id -> sends in flight
        self.finished = threading.Event()  # set when a send ends: its endpoint may take the next one

    def run_once(self, wait_for_room: float = 0.0) -> int:
        """Claim what there is room for (waiting up to `wait_for_room` for a free sender)
        and hand it to the senders; returns how many were claimed."""
        got = self.free.acquire(timeout=wait_for_room) if wait_for_room > 0 else self.free.acquire(blocking=False)
        if not got:
            return 0
        room = 1
        while room < SENDERS and self.free.acquire(blocking=False):
            room += 1
        try:
            with self.lock:
                busy = dict(self.busy)
            with session_scope(self.engine) as s:
                due = webhooks.claim_due(s, limit=room, lease_seconds=lease_seconds(self.settings.webhook_timeout_seconds),
                                         busy=busy, per_endpoint=PER_ENDPOINT)
        except BaseException:
            for _ in range(room):
                self.free.release()
            raise
        for _ in range(room - len(due)):
            self.free.release()
        for d in due:
            with self.lock:
                self.busy[d.endpoint_id] += 1
            self.pool.submit(self._deliver, d)
        return len(due)

    def _deliver(self, due: webhooks.Due) -> None:
        try:
            ok, code, error = send(self.client, due, self.settings.webhook_allow_private_targets)
            with session_scope(self.engine) as s:
                webhooks.record_attempt(s, due.id, ok=ok, status_code=code, error=error,
                                        retry_seconds=self.settings.webhook_retry_seconds,
                                        backoff_base=self.settings.webhook_backoff_seconds)
            if not ok:
                log.info("webhook %s to %s failed: %s", due.event_id, due.url, error)
        except Exception:  # the lease brings the row back; keep the loop alive
            log.exception("webhook delivery %s failed in the worker", due.id)
        finally:
            with self.lock:
                self.busy[due.endpoint_id] -= 1
                if self.busy[due.endpoint_id] <= 0:
                    del self.busy[due.endpoint_id]
            self.free.release()
            self.finished.set()

    def prune(self) -> None:
        try:
            with session_scope(self.engine) as s:
                webhooks.prune_log(s, older_than_seconds=self.settings.webhook_log_retention_seconds)
        except Exception:
            log.exception("pruning the webhook delivery log failed")

    def close(self) -> None:
        """Unsent work stays in the outbox; sends under way end within their timeout."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.client.close()


def start(settings: Settings, stop: threading.Event, engine: Engine | None = None) -> threading.Thread:
    """The loop as a daemon thread, until `stop` is set. A backlog is worked off as fast as
    senders free up (a send that ends wakes the loop); an idle outbox is looked at every
    poll interval."""
    deliverer = Deliverer(settings, engine)
    poll = settings.webhook_poll_seconds
    next_prune = 0.0

    def loop() -> None:
        nonlocal next_prune
        try:
            while not stop.is_set():
                if time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + PRUNE_EVERY_SECONDS
                    deliverer.prune()
                deliverer.finished.clear()
                try:
                    claimed = deliverer.run_once(wait_for_room=poll)
                except Exception:  # a database blip must not end deliveries
                    log.exception("webhook delivery pass failed")
                    claimed = 0
                if not claimed:
                    deliverer.finished.wait(poll)
        finally:
            deliverer.close()

    thread = threading.Thread(target=loop, daemon=True, name="webhooks")
    thread.start()
    return thread
