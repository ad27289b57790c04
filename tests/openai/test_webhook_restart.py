"""The outbox survives the process that should deliver it: events committed while no worker
runs, and a worker SIGKILLed while retrying, are delivered by the next worker process."""

from __future__ import annotations

import secrets

import openai
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.models import WebhookDelivery
from core.services import jobs, webhooks
from tests.openai.conftest import FAST_WEBHOOKS, wait_for
from tests.stacks import kill_machine, own_pool


def test_events_wait_in_sql_for_a_worker_and_survive_its_death(settings_env, stack_dir, tmp_path, receiver):
    model = stack_dir / "models" / "tiny-llama"
    model.mkdir(parents=True, exist_ok=True)  # job creation only checks the directory; nothing trains here
    path = f"/restart/{secrets.token_hex(4)}"
    with own_pool(settings_env, tmp_path, model, tag="webhooks", **FAST_WEBHOOKS) as pool:
        team = pool.team()
        with Session(pool.engine) as s:
            endpoint = webhooks.create_endpoint(s, team, receiver.url(path), allow_private=True)
            endpoint_id, secret = endpoint.id, endpoint.secret
            s.commit()
        job_id = pool.job(team, max_steps=1)
        with Session(pool.engine) as s:  # queued, then cancelled: two events, committed, nobody to send them
            jobs.cancel_job(s, team, job_id)
            s.commit()

        def deliveries():
            with Session(pool.engine) as s:
                return list(s.scalars(select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)))

        assert [d.status for d in deliveries()] == ["pending", "pending"] and receiver.on(path) == []

        receiver.failures_left[path] = 10**6  # the receiver is down while the first worker runs
        with pool.worker() as first:
            wait_for(lambda: len(receiver.on(path)) >= 2, timeout=60, what="the first worker's attempts")
            kill_machine(first)  # SIGKILL mid-retry: whatever it held in memory is gone
        assert {d.status for d in deliveries()} == {"pending"}

        receiver.failures_left[path] = 0
        with pool.worker():
            wait_for(lambda: {d.status for d in deliveries()} == {"delivered"}, timeout=60, what="delivery by the second worker")

        sdk = openai.OpenAI(api_key="unused")
        got = {sdk.webhooks.unwrap(r.body, r.headers, secret=secret).type for r in receiver.answered_ok(path)}
        assert got == {"fine_tuning.job.queued", "fine_tuning.job.cancelled"}
