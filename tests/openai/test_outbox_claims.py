"""Claiming due deliveries on both databases: a claimed row is leased away from other
delivery loops until its lease runs out (a dead worker's row comes back)."""

from __future__ import annotations

import secrets

import pytest
from sqlalchemy.orm import Session

from core.db import make_engine
from core.migrate import upgrade_head
from core.models import WebhookDelivery, utcnow
from core.services import webhooks
from core.services.auth import create_team


@pytest.fixture(params=["postgresql", "sqlite"])
def session(request, tmp_path):
    if request.param == "postgresql":
        yield request.getfixturevalue("pg_session")
        return
    url = f"sqlite:///{tmp_path / 'tf.db'}"
    upgrade_head(url)
    engine = make_engine(url)
    with Session(engine) as s:
        yield s
    engine.dispose()


def test_a_claim_leases_the_row_until_it_runs_out(session):
    team = create_team(session, f"t-{secrets.token_hex(3)}")
    ep = webhooks.create_endpoint(session, team.id, "http://127.0.0.1:9/hook", allow_private=True)
    event_id = webhooks.emit(session, team.id, "fine_tuning.job.succeeded", {"id": "ftjob-1"})
    assert webhooks.emit(session, "team-without-endpoints", "fine_tuning.job.failed", {"id": "x"}) is None

    (due,) = webhooks.claim_due(session, limit=10, lease_seconds=60)
    assert (due.event_id, due.url, due.secret) == (event_id, ep.url, ep.secret)
    assert webhooks.claim_due(session, limit=10, lease_seconds=60) == []  # leased: another loop gets nothing
    session.flush()
    # A lease that has run out (the claimer died mid-send) makes the row due again.
    d = session.get(WebhookDelivery, due.id)
    d.next_attempt_at = utcnow()
    session.flush()
    assert [x.id for x in webhooks.claim_due(session, limit=10, lease_seconds=60)] == [due.id]
    webhooks.record_attempt(session, due.id, ok=True, status_code=204, error=None, retry_seconds=60, backoff_base=1)
    d.next_attempt_at = utcnow()
    session.flush()
    assert webhooks.claim_due(session, limit=10, lease_seconds=60) == []  # delivered rows are never sent again


def test_finished_deliveries_are_pruned_after_the_retention_pending_ones_never(session):
    from datetime import timedelta

    team = create_team(session, f"t-{secrets.token_hex(3)}")
    webhooks.create_endpoint(session, team.id, "http://127.0.0.1:9/hook", allow_private=True)
    for _ in range(3):
        webhooks.emit(session, team.id, "fine_tuning.job.succeeded", {"id": "ftjob-1"})
    session.flush()
    old, recent, pending = session.query(WebhookDelivery).order_by(WebhookDelivery.id).all()
    old.status, recent.status = "delivered", "failed"
    old.created_at = pending.created_at = utcnow() - timedelta(days=40)
    session.flush()
    assert webhooks.prune_log(session, older_than_seconds=30 * 86400) == 1
    session.expire_all()
    assert {d.id for d in session.query(WebhookDelivery)} == {recent.id, pending.id}
