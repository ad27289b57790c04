"""A worker killed outright (SIGKILL of its process group and its training child, as a
power cut would) costs an attempt, not the job: its lease expires, another worker's
reconciler re-queues the job, and the next attempt resumes from the newest checkpoint."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.models import Checkpoint, Worker
from tests.faults.conftest import assert_contiguous
from tests.stacks import kill_machine


def _has_checkpoint(pool, job_id) -> bool:
    with Session(pool.engine) as s:
        return s.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id)).first() is not None


def test_sigkilled_worker_job_resumes_on_another_worker(pool):
    team = pool.team()
    steps = 10
    job_id = pool.job(team, max_steps=steps, every=2, accumulate=6)
    with pool.worker() as a, pool.worker() as b:
        workers = {a.worker_id: a, b.worker_id: b}
        pool.wait(lambda: pool.row(job_id).status == "running", "the job to start")
        first = pool.row(job_id).worker_id
        pool.wait(lambda: _has_checkpoint(pool, job_id), "the first checkpoint upload", timeout=90)
        victim, survivor = workers[first], next(p for w, p in workers.items() if w != first)
        assert pool.row(job_id).step < steps, "the job finished before the kill: make steps slower"
        killed_children = kill_machine(victim)
        assert killed_children, "the victim ran no training process"

        done = pool.wait_status(job_id, ("succeeded", "failed", "cancelled"), timeout=150)
        assert done.status == "succeeded", done.error
        assert done.attempt == 2
        events = pool.events(job_id)
        messages = [e.message for e in events]
        assert any(m.startswith(f"Lease of worker {first} expired on attempt 1") for m in messages), messages
        assert any(m == f"Attempt 2 started on worker {survivor.worker_id}" for m in messages), messages
        resumed = [e for e in events if e.message.startswith("Resuming from the checkpoint at step")]
        assert len(resumed) == 1 and resumed[0].attempt == 2 and resumed[0].data["step"] >= 2
        assert_contiguous(pool, job_id, steps)
        with Session(pool.engine) as s:  # the pool no longer shows the dead worker as active
            assert s.get(Worker, first).active is False and s.get(Worker, survivor.worker_id).active is True


def test_worker_lost_on_the_last_attempt_fails_the_job_with_the_reason(pool):
    pool.env["TUNEFORGE_MAX_ATTEMPTS"] = "1"
    pool.settings = pool.settings.model_copy(update={"max_attempts": 1})
    job_id = pool.job(pool.team(), max_steps=10_000, every=10_000)
    with pool.worker() as victim:
        pool.wait(lambda: pool.row(job_id).status == "running" and (pool.row(job_id).step or 0) >= 1, "training")
        kill_machine(victim)
    with pool.worker():  # its reconciler finds the expired lease
        done = pool.wait_status(job_id, ("succeeded", "failed", "cancelled", "queued"), timeout=60)
    assert done.status == "failed" and done.attempt == 1
    assert done.error["code"] == "max_attempts_exceeded", done.error
    assert "lost 1 times" in done.error["message"]
