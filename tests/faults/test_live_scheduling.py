"""The scheduler with a real worker: one team's burst does not starve another, and cancel
and pause reach a running job within seconds, freeing its slot for the next job at once."""

from __future__ import annotations

import time
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.models import Checkpoint, JobEvent
from core.services.jobs import cancel_job, pause_job, resume_job

TERMINAL = ("succeeded", "failed", "cancelled")


def _do(pool, fn, team_id, job_id):
    with Session(pool.engine) as s:
        fn(s, team_id, job_id)
        s.commit()


def _started(pool, job_id, attempt=1):
    with Session(pool.engine) as s:
        return s.scalars(select(JobEvent.created_at).where(
            JobEvent.job_id == job_id, JobEvent.message.like(f"Attempt {attempt} started%"))).first()


def test_two_teams_one_slot_second_team_is_not_starved(pool):
    a, b = pool.team(), pool.team()
    jobs_a = [pool.job(a, max_steps=10_000, every=10_000) for _ in range(6)]
    jobs_b = [pool.job(b, max_steps=10_000, every=10_000) for _ in range(2)]
    owner = {**{j: a for j in jobs_a}, **{j: b for j in jobs_b}}
    order = []
    with pool.worker(TUNEFORGE_WORKER_SLOTS="1"):
        deadline = time.monotonic() + 150
        while len(order) < len(owner):  # cancel each job as soon as it runs: the slot turns over fast
            assert time.monotonic() < deadline, f"only {order} started"
            for job_id, team_id in owner.items():
                if job_id not in order and pool.row(job_id).status == "running":
                    order.append(job_id)
                    _do(pool, cancel_job, team_id, job_id)
            time.sleep(0.1)
        for job_id in owner:
            pool.wait_status(job_id, TERMINAL, timeout=30)
    started = {j: _started(pool, j) for j in owner}
    assert [started[j] for j in order] == sorted(started.values())
    # FIFO would run A1..A6 before B1; fair share runs B1 right after A1.
    assert started[jobs_b[0]] < started[jobs_a[2]], [("A" if owner[j] == a else "B") for j in order]
    assert order.index(jobs_b[0]) == 1, [("A" if owner[j] == a else "B") for j in order]


def test_pause_and_cancel_reach_a_running_job_within_seconds(pool):
    team = pool.team()
    x = pool.job(team, max_steps=10_000, every=10_000)
    y = pool.job(team, max_steps=10_000, every=10_000)
    with pool.worker(TUNEFORGE_WORKER_SLOTS="1"):
        pool.wait(lambda: pool.row(x).status == "running" and (pool.row(x).step or 0) >= 1, "x training", timeout=60)
        assert pool.row(y).status == "queued"  # one slot
        t0 = time.monotonic()
        _do(pool, pause_job, team, x)
        pool.wait_status(x, ("paused",) + TERMINAL, timeout=15)
        pause_latency = time.monotonic() - t0
        assert pool.row(x).status == "paused"
        with Session(pool.engine) as s:
            paused_at = s.scalars(select(Checkpoint.step).where(Checkpoint.job_id == x)).one()
        pool.wait(lambda: pool.row(y).status == "running", "y to take the freed slot", timeout=15)
        _do(pool, resume_job, team, x)  # queued behind y, which holds the only slot
        t0 = time.monotonic()
        _do(pool, cancel_job, team, y)
        done = pool.wait_status(y, TERMINAL, timeout=15)
        cancel_latency = time.monotonic() - t0
        assert done.status == "cancelled"
        pool.wait(lambda: pool.row(x).status == "running", "x to resume in the freed slot", timeout=15)
        handover = _started(pool, x, attempt=2) - pool.row(y).finished_at
        _do(pool, cancel_job, team, x)
        assert pool.wait_status(x, TERMINAL, timeout=15).status == "cancelled"
    assert pause_latency < 10 and cancel_latency < 5, (pause_latency, cancel_latency)
    assert timedelta(0) <= handover < timedelta(seconds=3), handover
    assert f"Resuming from the checkpoint at step {paused_at}" in pool.messages(x)
