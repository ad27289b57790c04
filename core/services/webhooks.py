"""Webhooks: a team's endpoints, the events written to them through an outbox, and the
bookkeeping of their delivery.

Why an outbox: an event is a row of `webhook_deliveries` inserted in the same transaction
as the change it announces (`job_status_changed` is called by lifecycle.set_job_status, the
one status writer). A change that rolls back therefore announces nothing, and a committed
one cannot be lost by a crash between commit and send: the row waits until a worker's
delivery loop (worker/webhooks.py) sends it, retrying with exponential backoff for
`webhook_retry_seconds`. Nothing here does network I/O, so a slow or dead receiver can
never hold a job's transaction.

Payloads are OpenAI's webhook event object (`{id, object: "event", type, created_at,
data: {id}}`) and are signed as Standard Webhooks (`webhook-id`, `webhook-timestamp`,
`webhook-signature`), which is what the official SDK's `client.webhooks.unwrap()` checks.
Event types: OpenAI's `fine_tuning.job.succeeded|failed|cancelled`, and as extensions the
same pattern for every other status plus `fine_tuning.job.checkpoint.created`.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session
from standardwebhooks.webhooks import Webhook

from core.egress import TargetRefused, check_target
from core.errors import InvalidRequest, NotFound
from core.models import Job, WebhookDelivery, WebhookEndpoint, as_utc, new_id, utcnow
from core.services.pagination import Page, paginate
from core.states import JobStatus

SECRET_PREFIX = "whsec_"
CHECKPOINT_CREATED = "fine_tuning.job.checkpoint.created"
EVENT_TYPES = tuple(f"fine_tuning.job.{s.value}" for s in JobStatus) + (CHECKPOINT_CREATED,)
MAX_ENDPOINTS_PER_TEAM = 20
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


def status_event_type(status: JobStatus | str) -> str:
    return f"fine_tuning.job.{JobStatus(status).value}"


# --- endpoints ----------------------------------------------------------------------------


def _check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest(f"url must be an absolute http(s) URL, got {url!r}", param="url")
    if len(url) > 2048:
        raise InvalidRequest("url must be at most 2048 characters", param="url")
    return url


def _check_events(events: list[str] | None) -> list[str] | None:
    if events is None:
        return None
    if not events:
        raise InvalidRequest("events must name at least one event type (leave it out for all)", param="events")
    for i, name in enumerate(events):
        if name not in EVENT_TYPES:
            raise InvalidRequest(f"events[{i}]: unknown event type {name!r}; known: {', '.join(EVENT_TYPES)}", param=f"events.{i}")
    return sorted(set(events))


def new_secret() -> str:
    """Standard Webhooks' form: `whsec_` + base64 of 32 random bytes (the SDK decodes it)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def create_endpoint(
    session: Session, team_id: str, url: str, *, events: list[str] | None = None, description: str | None = None,
    allow_private: bool = False,
) -> WebhookEndpoint:
    """The caller shows `endpoint.secret` once, in the creation response. `allow_private` is
    the deployment's `webhook_allow_private_targets` (core/egress.py says why it is off)."""
    try:
        check_target(_check_url(url), allow_private=allow_private)
    except TargetRefused as e:
        raise InvalidRequest(f"url: {e}", param="url", code="url_not_allowed") from None
    count = session.scalar(select(func.count()).where(WebhookEndpoint.team_id == team_id))
    if count >= MAX_ENDPOINTS_PER_TEAM:
        raise InvalidRequest(f"a team may register at most {MAX_ENDPOINTS_PER_TEAM} webhook endpoints", param="url")
    ep = WebhookEndpoint(
        team_id=team_id, url=_check_url(url), secret=new_secret(), events=_check_events(events), description=description
    )
    session.add(ep)
    session.flush()
    return ep


def get_endpoint(session: Session, team_id: str, endpoint_id: str) -> WebhookEndpoint:
    ep = session.get(WebhookEndpoint, endpoint_id)
    if ep is None or ep.team_id != team_id:
        raise NotFound(f"No webhook endpoint with id {endpoint_id!r}", param="webhook_id")
    return ep


def list_endpoints(session: Session, team_id: str, *, after: str | None = None, limit: int = 20) -> Page[WebhookEndpoint]:
    stmt = select(WebhookEndpoint).where(WebhookEndpoint.team_id == team_id)
    return paginate(session, stmt, WebhookEndpoint.id, after=after, limit=limit)


def delete_endpoint(session: Session, team_id: str, endpoint_id: str) -> WebhookEndpoint:
    """Its pending deliveries go with it (cascade): nobody is left to receive them."""
    ep = get_endpoint(session, team_id, endpoint_id)
    session.delete(ep)
    session.flush()
    return ep


def list_deliveries(
    session: Session, team_id: str, endpoint_id: str, *, after: str | None = None, limit: int = 20
) -> Page[WebhookDelivery]:
    get_endpoint(session, team_id, endpoint_id)
    stmt = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)
    return paginate(session, stmt, WebhookDelivery.id, after=after, limit=limit)


# --- the outbox (called inside the transaction of the change) -----------------------------


def emit(session: Session, team_id: str, event_type: str, data: dict[str, Any]) -> str | None:
    """Queue `event_type` for every endpoint of the team that subscribed to it; returns the
    event id (None when nobody listens). Written in the caller's transaction."""
    endpoints = [
        ep for ep in session.scalars(select(WebhookEndpoint).where(WebhookEndpoint.team_id == team_id))
        if ep.events is None or event_type in ep.events
    ]
    if not endpoints:
        return None
    now = utcnow()
    event_id = new_id("evt")
    body = json.dumps(
        {"id": event_id, "object": "event", "type": event_type, "created_at": int(now.timestamp()), "data": data},
        ensure_ascii=False, separators=(",", ":"),
    )
    for ep in endpoints:
        session.add(WebhookDelivery(endpoint_id=ep.id, event_id=event_id, event_type=event_type, payload=body,
                                    status=PENDING, attempts=0, next_attempt_at=now, created_at=now))
    return event_id


def job_status_changed(session: Session, job: Job, old: str, new: str) -> None:
    """The hook lifecycle.set_job_status calls. `data.id` is the job id, as OpenAI sends it;
    the rest are extensions."""
    data: dict[str, Any] = {"id": job.id, "status": new, "previous_status": old}
    if new == JobStatus.SUCCEEDED.value and job.fine_tuned_model:
        data["fine_tuned_model"] = job.fine_tuned_model
    if new == JobStatus.FAILED.value and job.error:
        data["error"] = job.error
    emit(session, job.team_id, status_event_type(new), data)


def checkpoint_created(session: Session, job: Job, step: int, metrics: dict[str, Any] | None) -> None:
    emit(session, job.team_id, CHECKPOINT_CREATED, {"id": job.id, "step_number": step, "metrics": metrics or {}})


# --- delivery bookkeeping (the worker's loop does the sending) -----------------------------


@dataclass(frozen=True)
class Due:
    """What one attempt needs, read while claiming so the send holds no session."""

    id: str
    endpoint_id: str
    url: str
    secret: str
    event_id: str
    payload: str


def claim_due(
    session: Session, *, limit: int, lease_seconds: float, busy: Mapping[str, int] | None = None, per_endpoint: int | None = None
) -> list[Due]:
    """Take up to `limit` deliveries whose time has come, for this caller only.

    A conditional UPDATE per row pushes `next_attempt_at` past the attempt's timeout, so
    another loop (another worker) skips it; if this process dies mid-send, the lease runs
    out and the row is due again. Works the same on PostgreSQL and SQLite.

    `busy` (endpoint id -> sends in flight) and `per_endpoint` cap what one endpoint may
    hold at once, so a receiver that hangs ties up at most that many senders while the
    others keep delivering to everyone else."""
    now = utcnow()
    counts = dict(busy or {})
    full = [ep for ep, n in counts.items() if per_endpoint is not None and n >= per_endpoint]
    stmt = select(WebhookDelivery.id, WebhookDelivery.next_attempt_at, WebhookDelivery.endpoint_id).where(
        WebhookDelivery.status == PENDING, WebhookDelivery.next_attempt_at <= now
    )
    if full:
        stmt = stmt.where(WebhookDelivery.endpoint_id.not_in(full))
    rows = session.execute(stmt.order_by(WebhookDelivery.next_attempt_at).limit(limit * 4)).all()
    lease = now + timedelta(seconds=lease_seconds)
    claimed = []
    for delivery_id, seen, endpoint_id in rows:
        if len(claimed) == limit:
            break
        if per_endpoint is not None and counts.get(endpoint_id, 0) >= per_endpoint:
            continue
        won = session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id, WebhookDelivery.status == PENDING,
                   WebhookDelivery.next_attempt_at == seen)
            .values(next_attempt_at=lease)
            .execution_options(synchronize_session=False)
        ).rowcount
        if won == 1:
            claimed.append(delivery_id)
            counts[endpoint_id] = counts.get(endpoint_id, 0) + 1
    if not claimed:
        return []
    found = session.execute(
        select(WebhookDelivery.id, WebhookDelivery.endpoint_id, WebhookEndpoint.url, WebhookEndpoint.secret,
               WebhookDelivery.event_id, WebhookDelivery.payload)
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .where(WebhookDelivery.id.in_(claimed))
    ).all()
    return [Due(*row) for row in found]


def signed_headers(secret: str, event_id: str, payload: str, at: datetime | None = None) -> dict[str, str]:
    """Standard Webhooks headers for one attempt; signed afresh each time, because receivers
    (the SDK included) refuse timestamps older than five minutes."""
    at = at or utcnow()
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(event_id, at, payload),
        "content-type": "application/json",
    }


def backoff_seconds(attempts: int, base: float, cap: float = 3600.0) -> float:
    """base, 2*base, 4*base, ... capped (an hour by default), after the n-th failed attempt."""
    return min(base * 2 ** max(attempts - 1, 0), cap)


def record_attempt(
    session: Session,
    delivery_id: str,
    *,
    ok: bool,
    status_code: int | None,
    error: str | None,
    retry_seconds: float,
    backoff_base: float,
) -> WebhookDelivery | None:
    """The outcome of one attempt: delivered, due again after a backoff, or given up once
    the event is older than `retry_seconds`. None when the row is gone (endpoint deleted)."""
    d = session.get(WebhookDelivery, delivery_id)
    if d is None or d.status != PENDING:
        return None
    now = utcnow()
    d.attempts += 1
    d.last_attempt_at, d.last_status_code, d.last_error = now, status_code, (error or None) and error[:2000]
    if ok:
        d.status, d.delivered_at = DELIVERED, now
        return d
    wait = backoff_seconds(d.attempts, backoff_base)
    if (now - as_utc(d.created_at)).total_seconds() + wait > retry_seconds:
        d.status = FAILED
    else:
        d.next_attempt_at = now + timedelta(seconds=wait)
    return d


def prune_log(session: Session, *, older_than_seconds: float) -> int:
    """Forget finished deliveries (delivered or given up) older than the retention, so the
    outbox stays small; pending ones are never pruned. Returns how many rows went."""
    cutoff = utcnow() - timedelta(seconds=older_than_seconds)
    return session.execute(
        delete(WebhookDelivery)
        .where(WebhookDelivery.status.in_((DELIVERED, FAILED)), WebhookDelivery.created_at < cutoff)
        .execution_options(synchronize_session=False)
    ).rowcount
