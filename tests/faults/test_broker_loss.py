"""The broker is not the source of truth: a flushed Redis loses no job (the reconciler
re-dispatches what was never claimed), and a message delivered twice runs once."""

from __future__ import annotations

import os
import signal
import time

import redis
from celery import Celery

from core.tasks import RUN_JOB, worker_queue
from tests.stacks import children
from worker.scheduler import run_tick


def test_flushed_broker_loses_no_dispatched_or_queued_job(pool):
    # The frozen worker below must still count as live when the test dispatches to it.
    pool.env["TUNEFORGE_WORKER_TIMEOUT_SECONDS"] = "30"
    settings = pool.settings.model_copy(update={"worker_timeout_seconds": 30.0})
    broker = pool.env["TUNEFORGE_BROKER_URL"]
    assert not broker.endswith("/0"), "never flush the shared db 0"
    team = pool.team()
    sender = Celery(broker=broker)
    r = redis.Redis.from_url(broker)
    try:
        with pool.worker(TUNEFORGE_WORKER_SLOTS="2") as w:
            os.kill(w.pid, signal.SIGSTOP)  # its scheduler and consumer stop; its blocking pop (1 s) lapses
            try:
                time.sleep(2.5)
                jobs = [pool.job(team, max_steps=1) for _ in range(3)]
                # The same pass every worker runs. It skips while the frozen worker's planner
                # still holds the lock (frozen mid-tick, until PostgreSQL ends its idle transaction).
                deadline = time.monotonic() + 30
                while not (result := run_tick(sender, settings)).planned:
                    assert time.monotonic() < deadline, "the planner lock was never released"
                    time.sleep(0.5)
                dispatched = [a.job_id for a in result.assignments]
                assert len(dispatched) == 2  # two slots: two go to the broker, one waits in SQL
                own_queue = worker_queue(pool.env["TUNEFORGE_QUEUE"], w.worker_id)
                assert r.llen(own_queue) == 2
                r.flushdb()
                assert r.llen(own_queue) == 0
            finally:
                os.kill(w.pid, signal.SIGCONT)
            for job_id in jobs:
                done = pool.wait_status(job_id, ("succeeded", "failed", "cancelled"), timeout=120)
                assert done.status == "succeeded", done.error
                assert done.attempt == 1
        assert "reconciler re-dispatching" in w.log_path.read_text()
    finally:
        sender.close()
        r.close()


def test_same_run_job_delivered_twice_runs_once(pool):
    job_id = pool.job(pool.team(), max_steps=6, every=3, accumulate=4)
    sender = Celery(broker=pool.env["TUNEFORGE_BROKER_URL"])
    try:
        with pool.worker(TUNEFORGE_WORKER_SLOTS="2") as w:  # a free slot a duplicate could take
            pool.wait(lambda: pool.row(job_id).status == "running", "the job to start")
            for _ in range(2):
                sender.send_task(RUN_JOB, args=[job_id], queue=worker_queue(pool.env["TUNEFORGE_QUEUE"], w.worker_id))
            log = w.log_path
            pool.wait(lambda: log.read_text().count("Task tuneforge.run_job[") >= 3 + 2, "both duplicates to be handled",
                      timeout=30)  # 3 received + at least the 2 duplicates done
            assert pool.row(job_id).status == "running"
            assert len(children(w.pid)) == 1
            done = pool.wait_status(job_id, ("succeeded", "failed", "cancelled"), timeout=120)
        assert done.status == "succeeded" and done.attempt == 1, done.error
        messages = pool.messages(job_id)
        assert sum(m.startswith("Attempt ") and " started on worker " in m for m in messages) == 1, messages
    finally:
        sender.close()
