"""The broker is not the source of truth: a flushed Redis loses no job (the reconciler
re-dispatches what was never claimed), and a message delivered twice runs once."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import redis
from celery import Celery

from core.tasks import RUN_JOB, worker_queue
from tests.stacks import children
from worker.scheduler import run_tick


def local_ports(pid: int) -> set[int]:
    """The local TCP ports of pid's sockets, from /proc (readable while it is stopped)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[len("socket:["):-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def blocked_in_a_pop(r: redis.Redis, pid: int) -> list[dict]:
    """pid's connections that Redis shows blocked in a command (BRPOP): CLIENT LIST flags
    them 'b'. Matched by port, since other workers of the session share the db."""
    ports = local_ports(pid)
    return [c for c in r.client_list() if "b" in c.get("flags", "") and int(c["addr"].rsplit(":", 1)[1]) in ports]


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
            # Redis shows the worker waiting in a blocking pop (so the check below sees pops).
            pool.wait(lambda: blocked_in_a_pop(r, w.pid), "the worker to wait on its queues", timeout=60)
            os.kill(w.pid, signal.SIGSTOP)  # its scheduler and consumer stop
            try:
                # A pop the frozen worker had pending would still take a message off Redis:
                # wait until Redis itself shows none of its connections blocked in one.
                pool.wait(lambda: not blocked_in_a_pop(r, w.pid), "the frozen worker's blocking pop to lapse", timeout=30)
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
