"""Placement by the fit plan (issue 12): a GPU worker with less memory than the job's
`planned_gpu_memory_gb` never gets it, a CPU worker ignores the figure, the client's own
`min_gpu_memory_gb` still applies (the larger of the two wins), and a job no live worker can
hold says so, with the memory, in its queue reason. On PostgreSQL and SQLite."""

from __future__ import annotations

from datetime import timedelta

import pytest

from core.models import Job, Team, Worker, utcnow
from core.services.planner import gpu_memory_needed, job_fits
from core.services.scheduling import plan, queue_info
from core.spec import JobSpec

SPEC = JobSpec(model="org/llama-8b", training_file="file-x")
T0 = utcnow() - timedelta(hours=1)


@pytest.fixture
def db(any_db):
    return any_db


def team(db) -> Team:
    t = Team(name="mem")
    db.add(t)
    db.flush()
    return t


def worker(db, wid: str, gpus: int, mem: float | None, slots: int = 1) -> Worker:
    w = Worker(id=wid, hostname="h", slots=slots, gpus=gpus, gpu_memory_gb=mem, last_heartbeat=utcnow())
    db.add(w)
    db.flush()
    return w


def job(db, t: Team, jid: str, *, planned: float | None, asked: float | None = None, gpus: int = 1, n: int = 0) -> Job:
    j = Job(id=jid, team_id=t.id, model=SPEC.model, training_file_id="file-x", spec=SPEC.model_dump(mode="json"),
            spec_hash=SPEC.hash(), status="queued", gpus=gpus, min_gpu_memory_gb=asked, planned_gpu_memory_gb=planned,
            created_at=T0 + timedelta(seconds=n))
    db.add(j)
    db.flush()
    return j


def test_a_gpu_worker_too_small_for_the_plan_never_gets_the_job(db):
    t = team(db)
    worker(db, "a-24gb", 1, 24.0)  # first by id: tried first
    worker(db, "b-80gb", 1, 79.6)
    big = job(db, t, "job-big", planned=31.2, n=1)
    small = job(db, t, "job-small", planned=17.0, n=2)
    got = {a.job_id: a.worker_id for a in plan(db)}
    assert got == {"job-big": "b-80gb", "job-small": "a-24gb"}
    assert big.worker_id == "b-80gb" and small.worker_id == "a-24gb"


def test_a_job_the_pool_cannot_hold_waits_and_says_why(db):
    t = team(db)
    worker(db, "a-24gb", 1, 24.0, slots=2)
    waiting = job(db, t, "job-big", planned=31.2)
    assert plan(db) == []
    reason = queue_info(waiting).reason
    assert reason == "no live worker in the pool can run 1 GPU(s) with >= 31.2 GB (the job's fit plan needs that per GPU)"
    assert len(reason) <= 200  # the column's width


def test_a_cpu_worker_ignores_the_planned_figure(db):
    t = team(db)
    worker(db, "cpu", 0, None)
    worker(db, "gpu-8gb", 1, 8.0)
    j = job(db, t, "job-a", planned=12.0)
    [a] = plan(db)
    assert (a.job_id, a.worker_id) == ("job-a", "cpu")
    assert j.worker_id == "cpu"


def test_the_larger_of_the_clients_minimum_and_the_plan_applies(db):
    t = team(db)
    worker(db, "a-24gb", 1, 24.0)
    worker(db, "b-40gb", 1, 40.0)
    worker(db, "c-80gb", 1, 79.6)
    job(db, t, "job-asks-more", planned=20.0, asked=60.0, n=1)  # only the 80 GB card
    job(db, t, "job-plan-more", planned=30.0, asked=10.0, n=2)  # the 40 GB card (80 is taken)
    got = {a.job_id: a.worker_id for a in plan(db)}
    assert got == {"job-asks-more": "c-80gb", "job-plan-more": "b-40gb"}


def test_gpu_memory_needed_and_fit_rule():
    class J:  # the columns the rule reads (a Waiting row has the same)
        def __init__(self, gpus, asked, planned):
            self.gpus, self.min_gpu_memory_gb, self.planned_gpu_memory_gb = gpus, asked, planned

    assert gpu_memory_needed(J(1, None, None)) is None
    assert gpu_memory_needed(J(1, 40.0, None)) == 40.0
    assert gpu_memory_needed(J(1, None, 31.0)) == 31.0
    assert gpu_memory_needed(J(1, 40.0, 31.0)) == 40.0
    assert job_fits(1, 31.0, J(1, None, 31.0)) and not job_fits(1, 30.9, J(1, None, 31.0))
    assert job_fits(0, None, J(1, None, 31.0))  # a CPU worker: the embedded CPU mode
    assert not job_fits(0, None, J(1, 8.0, None))  # ...but never a job that asked for GPU memory
    assert not job_fits(1, None, J(1, None, 31.0))  # a GPU worker of unknown memory
