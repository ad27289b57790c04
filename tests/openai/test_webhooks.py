"""Webhooks end to end on the live API: endpoints per team, events from the transactional
outbox delivered by the worker's delivery loop to a real receiver on 127.0.0.1, signed so
that the official SDK's `client.webhooks.unwrap()` verifies them."""

from __future__ import annotations

import json
import secrets
import time
from datetime import timedelta

import openai
import pytest
from openai.types.webhooks import FineTuningJobSucceededWebhookEvent
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.models import WebhookDelivery, WebhookEndpoint, utcnow
from core.services import runs, webhooks
from core.services.lifecycle import set_job_status
from core.states import JobStatus
from tests.openai.conftest import wait_for

SDK = openai.OpenAI(api_key="unused-for-verification")


def hook(api, receiver, **body) -> tuple[str, str, str]:
    """Register an endpoint at a fresh receiver path; returns (path, endpoint id, secret)."""
    path = f"/hooks/{secrets.token_hex(4)}"
    r = api.http.post("/v1/webhooks", json={"url": receiver.url(path), **body})
    assert r.status_code == 200, r.text
    return path, r.json()["id"], r.json()["secret"]


def unwrapped(receiver, path: str, secret: str) -> list:
    return [SDK.webhooks.unwrap(r.body, r.headers, secret=secret) for r in receiver.answered_ok(path)]


def test_endpoints_are_per_team_and_show_the_secret_once(api, other, receiver):
    r = api.http.post("/v1/webhooks", json={"url": receiver.url("/crud"), "description": "ci"})
    assert r.status_code == 200, r.text
    ep = r.json()
    assert ep["object"] == "webhook_endpoint" and ep["events"] is None and ep["secret"].startswith("whsec_")
    listed = api.http.get("/v1/webhooks").json()
    assert [e["id"] for e in listed["data"]] == [ep["id"]] and listed["data"][0]["secret"] is None
    assert api.http.get(f"/v1/webhooks/{ep['id']}").json()["secret"] is None
    for call in (other.http.get, other.http.delete):
        assert call(f"/v1/webhooks/{ep['id']}").status_code == 404
    assert other.http.get(f"/v1/webhooks/{ep['id']}/deliveries").status_code == 404
    assert other.http.get("/v1/webhooks").json()["data"] == []
    gone = api.http.delete(f"/v1/webhooks/{ep['id']}")
    assert gone.json() == {"id": ep["id"], "object": "webhook_endpoint", "deleted": True}
    assert api.http.get(f"/v1/webhooks/{ep['id']}").status_code == 404


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"url": "ftp://example.com/x"}, 400, "url"),
    ({"url": "not a url"}, 400, "url"),
    ({"url": "http://127.0.0.1/x", "events": ["fine_tuning.job.exploded"]}, 400, "events.0"),
    ({"url": "http://127.0.0.1/x", "events": []}, 400, "events"),
    ({"url": "http://127.0.0.1/x", "secret": "mine"}, 422, "secret"),
])
def test_bad_endpoints_are_refused_naming_the_field(api, body, status, param):
    r = api.http.post("/v1/webhooks", json=body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == param


def test_every_status_change_is_delivered_and_the_sdk_verifies_it(api, receiver, deliverer, run_as_worker, model_dir, stack_engine):
    path, endpoint_id, secret = hook(api, receiver)
    job_id = api.job(str(model_dir)).json()["id"]
    claim = run_as_worker(job_id)
    with Session(stack_engine) as s:
        runs.record_checkpoint(s, job_id, claim.attempt, 2, f"jobs/{job_id}/checkpoints/step-2", {"loss": 1.5})
        runs.finish(s, job_id, claim.attempt, JobStatus.SUCCEEDED, fine_tuned_model=f"ft:tiny:{job_id}")
        s.commit()

    wait_for(lambda: len(receiver.answered_ok(path)) >= 4, what="four deliveries")
    events = unwrapped(receiver, path, secret)  # raises unless every signature verifies
    assert sorted(e.type for e in events) == [
        "fine_tuning.job.checkpoint.created", "fine_tuning.job.queued", "fine_tuning.job.running", "fine_tuning.job.succeeded"]
    assert all(e.data.id == job_id and e.object == "event" for e in events)
    done = next(e for e in events if e.type == "fine_tuning.job.succeeded")
    assert isinstance(done, FineTuningJobSucceededWebhookEvent)  # OpenAI's own event type, parsed by the SDK
    assert done.data.model_dump()["fine_tuned_model"] == f"ft:tiny:{job_id}"  # an extension, kept by the SDK
    checkpoint = next(e for e in events if e.type.endswith("checkpoint.created")).data.model_dump()
    assert checkpoint["step_number"] == 2 and checkpoint["metrics"] == {"loss": 1.5}
    raw = json.loads(receiver.answered_ok(path)[0].body)
    assert set(raw) == {"id", "object", "type", "created_at", "data"}

    first = receiver.answered_ok(path)[0]
    with pytest.raises(openai.InvalidWebhookSignatureError):
        SDK.webhooks.unwrap(first.body.replace(job_id.encode(), b"ftjob-forged"), first.headers, secret=secret)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        SDK.webhooks.unwrap(first.body, first.headers, secret=webhooks.new_secret())

    def delivery_log():  # the receiver answers before the deliverer records the outcome
        return api.http.get(f"/v1/webhooks/{endpoint_id}/deliveries").json()["data"]

    log = wait_for(lambda: {d["status"] for d in delivery_log()} == {"delivered"} and delivery_log(),
                   what="the log to show all delivered")
    assert len(log) == 4
    assert {d["attempts"] for d in log} == {1} and {d["last_status_code"] for d in log} == {200}
    assert {d["event_id"] for d in log} == {e.id for e in events}


def test_an_endpoint_gets_only_the_events_it_subscribed_to(api, receiver, deliverer, model_dir):
    path, _id, secret = hook(api, receiver, events=["fine_tuning.job.cancelled"])
    job_id = api.job(str(model_dir)).json()["id"]
    assert api.sdk.fine_tuning.jobs.cancel(job_id).status == "cancelled"
    wait_for(lambda: receiver.answered_ok(path), what="the cancelled event")
    time.sleep(0.5)  # room for a wrongly sent `queued` event to arrive
    assert [e.type for e in unwrapped(receiver, path, secret)] == ["fine_tuning.job.cancelled"]


def test_a_change_that_rolled_back_is_never_sent(api, receiver, deliverer, model_dir, stack_engine):
    path, endpoint_id, secret = hook(api, receiver)
    job_id = api.job(str(model_dir)).json()["id"]
    wait_for(lambda: receiver.answered_ok(path), what="the queued event")
    with Session(stack_engine) as s:
        set_job_status(s, job_id, JobStatus.PAUSED, message="about to roll back")
        assert s.scalars(select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id,
                                                       WebhookDelivery.event_type == "fine_tuning.job.paused")).all()
        s.rollback()
    # A committed change after it: once that one has arrived, the loop has had every chance
    # to send the rolled-back one too.
    assert api.sdk.fine_tuning.jobs.cancel(job_id).status == "cancelled"
    wait_for(lambda: len(receiver.answered_ok(path)) >= 2, what="the cancelled event")
    time.sleep(0.5)
    assert [e.type for e in unwrapped(receiver, path, secret)] == ["fine_tuning.job.queued", "fine_tuning.job.cancelled"]


def test_a_failing_receiver_gets_the_same_event_again_with_backoff(api, receiver, deliverer, model_dir):
    path, endpoint_id, secret = hook(api, receiver)
    receiver.failures_left[path] = 2
    api.job(str(model_dir))
    wait_for(lambda: receiver.answered_ok(path), what="the third attempt to succeed")
    tries = receiver.on(path)
    assert [t.answered for t in tries] == [500, 500, 200]
    assert len({t.headers["webhook-id"] for t in tries}) == 1  # one event, three attempts
    gaps = [b.at - a.at for a, b in zip(tries, tries[1:])]
    assert gaps[0] >= 0.18 and gaps[1] >= 0.36, gaps  # 0.2 s, then doubled
    SDK.webhooks.unwrap(tries[-1].body, tries[-1].headers, secret=secret)
    (log,) = wait_for(lambda: [d for d in api.http.get(f"/v1/webhooks/{endpoint_id}/deliveries").json()["data"]
                               if d["status"] == "delivered"], what="the log to show the delivery")
    assert log["attempts"] == 3 and log["last_status_code"] == 200


def test_a_hanging_receiver_holds_up_neither_jobs_nor_other_receivers(
    api, other, receiver, deliverer, run_as_worker, model_dir, fast_settings, stack_engine
):
    from worker.webhooks import SENDERS

    slow, slow_id, _ = hook(other, receiver)
    fast, _fid, secret = hook(api, receiver)
    receiver.hang_seconds[slow] = 4 * fast_settings.webhook_timeout_seconds
    with Session(stack_engine) as s:  # more stalled events than the worker has senders
        for i in range(3 * SENDERS):
            webhooks.emit(s, other.team_id, "fine_tuning.job.succeeded", {"id": f"ftjob-stalled-{i}"})
        s.commit()
    wait_for(lambda: receiver.on(slow), what="the slow receiver to stall")
    started = time.monotonic()
    job_id = api.job(str(model_dir)).json()["id"]
    run_as_worker(job_id)  # queued -> running while the slow receiver stalls
    wait_for(lambda: len(receiver.answered_ok(fast)) >= 2, timeout=10, what="both events at the healthy receiver")
    # Well within one POST timeout: the stalled endpoint holds only its share of the senders.
    assert max(r.at for r in receiver.answered_ok(fast)) - started < fast_settings.webhook_timeout_seconds / 2
    assert sorted(e.type for e in unwrapped(receiver, fast, secret)) == ["fine_tuning.job.queued", "fine_tuning.job.running"]
    log = wait_for(lambda: [d for d in other.http.get(f"/v1/webhooks/{slow_id}/deliveries?limit=100").json()["data"] if d["attempts"]],
                   what="the slow receiver's first attempt to time out")
    assert log[0]["status"] == "pending" and "Timeout" in log[0]["last_error"]
    other.http.delete(f"/v1/webhooks/{slow_id}")


# --- retry bookkeeping (service level, rolled back) -----------------------------------------


def test_backoff_doubles_up_to_an_hour():
    assert [webhooks.backoff_seconds(n, 5) for n in (1, 2, 3, 4)] == [5, 10, 20, 40]
    assert webhooks.backoff_seconds(30, 5) == 3600


def test_an_event_is_given_up_after_the_retry_window(db_session):
    from core.services.auth import create_team

    team = create_team(db_session, f"t-{secrets.token_hex(3)}")
    ep = webhooks.create_endpoint(db_session, team.id, "http://127.0.0.1:9/x", allow_private=True)
    webhooks.emit(db_session, team.id, "fine_tuning.job.failed", {"id": "ftjob-x"})
    (d,) = db_session.scalars(select(WebhookDelivery).where(WebhookDelivery.endpoint_id == ep.id)).all()
    kept = webhooks.record_attempt(db_session, d.id, ok=False, status_code=503, error="HTTP 503", retry_seconds=86400, backoff_base=5)
    assert kept.status == "pending" and kept.attempts == 1
    assert timedelta(seconds=4) < kept.next_attempt_at - utcnow() <= timedelta(seconds=5)
    d.created_at = utcnow() - timedelta(days=1)
    given_up = webhooks.record_attempt(db_session, d.id, ok=False, status_code=None, error="ConnectError", retry_seconds=86400, backoff_base=5)
    assert given_up.status == "failed" and given_up.attempts == 2
    assert db_session.get(WebhookEndpoint, ep.id) is not None


def test_a_team_has_a_bounded_number_of_endpoints(db_session):
    from core.errors import InvalidRequest
    from core.services.auth import create_team

    team = create_team(db_session, f"t-{secrets.token_hex(3)}")
    for i in range(webhooks.MAX_ENDPOINTS_PER_TEAM):
        webhooks.create_endpoint(db_session, team.id, f"http://127.0.0.1:9/{i}", allow_private=True)
    with pytest.raises(InvalidRequest, match="at most"):
        webhooks.create_endpoint(db_session, team.id, "http://127.0.0.1:9/one-too-many", allow_private=True)
