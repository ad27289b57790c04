"""The pool as one team sees it (core.services.pool): workers with stale ones marked, the
queue in the scheduler's order, shares — and nothing of another team but counts."""

from __future__ import annotations

from datetime import timedelta

import pytest

from core.models import utcnow
from core.services.pool import dispatch_order, pool_view
from core.services.planner import plan
from tests.scheduling.test_scheduling import job, team, worker

TIMEOUT = timedelta(seconds=60)


@pytest.fixture
def db(pg_session):
    return pg_session


def running(db, j, worker_id, seconds=30):
    j.status, j.worker_id, j.attempt = "running", worker_id, 1
    j.started_at = utcnow() - timedelta(seconds=seconds)
    j.lease_expires_at = utcnow() + timedelta(minutes=1)
    db.flush()
    return j


def test_other_teams_appear_only_as_counts(db):
    a, b = team(db, "pool-A", share=3.0), team(db, "pool-B-secret-name", share=1.0)
    worker(db, "w-live", slots=2)
    worker(db, "w-stale", slots=1, age=timedelta(minutes=10))
    a_run = running(db, job(db, a), "w-live")
    b_run = running(db, job(db, b), "w-live")
    a_wait = job(db, a)
    b_wait = [job(db, b), job(db, b)]

    view = pool_view(db, a.id, TIMEOUT)

    text = repr(view)
    for hidden in (b.id, b.name, b_run.id, *(j.id for j in b_wait)):
        assert hidden not in text
    live = next(w for w in view.workers if w.id == "w-live")
    assert (live.used_slots, live.my_running_job_ids, live.other_running_jobs, live.stale) == (2, [a_run.id], 1, False)
    assert next(w for w in view.workers if w.id == "w-stale").stale
    mine = [q for q in view.queue if q.job_id]
    assert [q.job_id for q in mine] == [a_wait.id]
    assert sum(q.others for q in view.queue) == view.waiting_total - 1 >= 2
    me = next(t for t in view.teams if t.mine)
    assert me.label == "pool-A" and me.running_jobs == 1 and me.waiting_jobs == 1
    assert all(t.label.startswith("other team ") for t in view.teams if not t.mine)


def test_queue_positions_follow_the_schedulers_order(db):
    a, b, c = team(db, "order-A"), team(db, "order-B"), team(db, "order-C")
    worker(db, "w1", slots=1)
    busy = running(db, job(db, c), "w1")  # no free slot: the tick only ranks
    a_jobs = [job(db, a) for _ in range(3)]
    b_job = job(db, b, priority=5)
    assert plan(db) == []
    order = dispatch_order(db)
    mine = {j.id for j in (*a_jobs, b_job)}
    ours = [j.id for j in order if j.id in mine]
    # Neither team has used the pool: fair share ties, and B's priority goes first.
    assert ours[0] == b_job.id and ours[1:] == [j.id for j in a_jobs]
    view = pool_view(db, a.id, TIMEOUT)
    positions = {q.job_id: q.position for q in view.queue if q.job_id}
    assert positions[a_jobs[0].id] < positions[a_jobs[1].id] < positions[a_jobs[2].id]
    # And the first job plan() hands out once the slot frees is the head of that order.
    busy.status, busy.worker_id = "succeeded", None
    db.flush()
    assert plan(db)[0].job_id == order[0].id
