"""The workers' scheduling loop is event-driven: a job queued (or a slot freed) wakes the
process that planned last at once, long before its interval would have."""

from __future__ import annotations

import secrets
import threading
import time
from datetime import UTC, datetime

import redis
from celery import Celery
from sqlalchemy.orm import Session

from core.db import make_engine
from core.models import Job, Team, Worker
from core.notify import PLAN, Listener
from core.services import lifecycle, runs
from core.tasks import worker_queue
from tests.conftest import fresh_database, settings_from_env
from tests.scheduling.test_planner import new_job
from worker import scheduler


def test_queued_job_and_freed_slot_wake_the_planner(settings_env, redis_url):
    with fresh_database("loop") as url:
        queue = f"tuneforge-loop-{secrets.token_hex(4)}"
        settings = settings_from_env({**settings_env, "TUNEFORGE_DATABASE_URL": url, "TUNEFORGE_QUEUE": queue,
                                      "TUNEFORGE_SCHEDULE_INTERVAL_SECONDS": "60"})
        engine = make_engine(url)
        listener = Listener(url, channels=(PLAN,), poll_seconds=0.1).start()
        app, stop, r = Celery(broker=redis_url), threading.Event(), redis.Redis.from_url(redis_url)
        try:
            assert listener.listening.wait(10)
            with Session(engine) as s:
                team = Team(name="loop")
                s.add_all([team, Worker(id="loop-w", hostname="h", slots=1, gpus=0)])
                s.commit()
                team_id = team.id
            scheduler.start(app, settings, stop, listener)
            time.sleep(1.0)  # its first pass (nothing to do) makes this process the planner

            def queue_job(jid: str) -> float:
                with Session(engine) as s:
                    s.add(new_job(team_id, jid, status="validating_files", gpus=0, created_at=datetime.now(UTC)))
                    s.flush()
                    lifecycle.set_job_status(s, jid, "queued")
                    s.commit()
                return time.monotonic()

            def dispatched(jid: str, since: float) -> float:
                with Session(engine) as s:
                    while s.get(Job, jid, populate_existing=True).worker_id is None:
                        assert time.monotonic() - since < 10, f"{jid} not dispatched (interval is 60 s)"
                        time.sleep(0.02)
                        s.rollback()
                return time.monotonic() - since

            first = dispatched("job-l1", queue_job("job-l1"))
            second_queued = queue_job("job-l2")  # the one slot is taken: it waits
            time.sleep(1.0)
            with Session(engine) as s:
                assert s.get(Job, "job-l2").worker_id is None
                claim = runs.claim_job(s, "job-l1", "loop-w", lease_seconds=60)
                s.commit()
            freed = time.monotonic()
            with Session(engine) as s:
                runs.finish(s, "job-l1", claim.attempt, "succeeded")
                s.commit()
            second = dispatched("job-l2", freed)
            assert second_queued < freed
            assert first < 2.0 and second < 2.0, (first, second)
            assert r.llen(worker_queue(queue, "loop-w")) == 2  # both sent to the worker's own queue
        finally:
            stop.set()
            listener.stop()
            r.delete(worker_queue(queue, "loop-w"))
            r.close()
            app.close()
            engine.dispose()
