"""The planner at scale (issue 9): same decisions as the former whole-table planner on random
pools, one planner per tick, maintained counts equal to a recount, planner-written queue
positions, and query plans that read an index range per team instead of the queue."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from api.schemas import job_object
from core.models import Job, Team, Worker
from core.services import lifecycle, runs
from core.services.planner import HEAD, head_of_line, plan_tick, running_charge_query, try_planner_lock
from core.services.scheduling import plan, queue_info, reconcile
from core.services.slot_accounting import maintained, recount
from core.spec import JobSpec
from tests.scheduling import reference

NOW = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)  # whole seconds: slot-time sums are exact
SPEC = JobSpec(model="org/m", training_file="file-x")
SPEC_JSON, SPEC_HASH = SPEC.model_dump(mode="json"), SPEC.hash()


def new_job(team_id: str, jid: str, **kw) -> Job:
    kw.setdefault("status", "queued")
    kw.setdefault("created_at", NOW - timedelta(hours=1))
    return Job(id=jid, team_id=team_id, model="org/m", training_file_id="file-x", spec=SPEC_JSON, spec_hash=SPEC_HASH, **kw)


def random_pool(db: Session, rng: random.Random) -> None:
    """Teams with shares and limits, workers of several shapes (some dead or inactive),
    running / dispatched / finished / waiting jobs; every timestamp distinct whole seconds."""
    teams = [Team(id=f"team-{i}", name=f"t{i}", share=rng.choice([1.0, 1.0, 2.0, 3.0]),
                  max_running_jobs=rng.choice([None, None, None, 1, 2, 4])) for i in range(rng.randint(1, 5))]
    db.add_all(teams)
    workers = []
    for i in range(rng.randint(1, 6)):
        gpus = rng.choice([0, 1, 2, 4])
        workers.append(Worker(id=f"w{i}", hostname="h", slots=rng.randint(1, 4), gpus=gpus,
                              gpu_memory_gb=rng.choice([24.0, 40.0, 80.0]) if gpus else None,
                              active=rng.random() > 0.1, started_at=NOW - timedelta(hours=2),
                              last_heartbeat=NOW - timedelta(seconds=rng.choice([1, 5, 20, 600]))))
    db.add_all(workers)
    db.flush()
    seconds = rng.sample(range(1, 80_000), 400)
    n = 0

    def ago() -> datetime:
        nonlocal n
        n += 1
        return NOW - timedelta(seconds=seconds[n])

    for w in workers:  # what holds slots now
        for _ in range(rng.randint(0, w.slots)):
            n += 1
            status = rng.choice(["running", "running", "pausing", "cancelling", "queued"])
            started = None if status == "queued" else ago()
            db.add(new_job(rng.choice(teams).id, f"job-{n:04d}", status=status, worker_id=w.id, attempt=1,
                           started_at=started, dispatched_at=NOW - timedelta(seconds=5), created_at=ago(),
                           gpus=rng.choice([0, 1, 1, min(w.gpus, 2)])))
    for _ in range(rng.randint(0, 15)):  # finished within the window
        n += 1
        finished = NOW - timedelta(seconds=rng.randint(10, 20 * 3600))
        started = None if rng.random() < 0.1 else finished - timedelta(seconds=rng.randint(1, 3000))
        db.add(new_job(rng.choice(teams).id, f"job-{n:04d}", status=rng.choice(["succeeded", "failed", "cancelled"]),
                       started_at=started, finished_at=finished, created_at=ago(), gpus=rng.choice([0, 1, 2])))
    for status in ("paused", "validating_files"):  # never planned
        n += 1
        db.add(new_job(teams[0].id, f"job-{n:04d}", status=status, created_at=ago()))
    if rng.random() < 0.4:  # a team whose head of line never fits: the planner must page past it
        for _ in range(HEAD + rng.randint(1, 10)):
            n += 1
            db.add(new_job(teams[-1].id, f"job-{n:04d}", priority=9, gpus=8, created_at=ago()))
    for _ in range(rng.randint(0, 60)):
        n += 1
        db.add(new_job(rng.choice(teams).id, f"job-{n:04d}", priority=rng.choice([0, 0, 0, 1, 5]),
                       gpus=rng.choice([0, 1, 1, 1, 2, 4]), min_gpu_memory_gb=rng.choice([None, None, None, 40.0, 80.0]),
                       planned_gpu_memory_gb=rng.choice([None, None, 20.5, 30.2, 60.0, 90.0]), created_at=ago()))
    db.flush()


@pytest.mark.parametrize("seed", range(40))
def test_same_assignments_as_the_reference_planner(any_db, seed):
    db = any_db
    random_pool(db, random.Random(seed))
    for _ in range(3):  # successive ticks: the second sees the first one's charges
        savepoint = db.begin_nested()
        want = [(a.job_id, a.worker_id) for a in reference.plan(db, now=NOW)]
        savepoint.rollback()
        got = [(a.job_id, a.worker_id) for a in plan(db, now=NOW)]
        assert got == want
        assert maintained(db) == recount(db)


def test_capped_tick_continues_where_it_stopped(pg_session):
    db = pg_session
    random_pool(db, random.Random(7))
    db.add(Worker(id="wide", hostname="h", slots=64, gpus=8, gpu_memory_gb=80.0, last_heartbeat=NOW))
    db.flush()
    savepoint = db.begin_nested()
    want = [(a.job_id, a.worker_id) for a in reference.plan(db, now=NOW)]
    savepoint.rollback()
    got, tick = [], plan_tick(db, now=NOW, max_assignments=3)
    while tick.capped:
        got += [(a.job_id, a.worker_id) for a in tick.assignments]
        tick = plan_tick(db, now=NOW, max_assignments=3)
    got += [(a.job_id, a.worker_id) for a in tick.assignments]
    assert len(want) > 3 and sorted(got) == sorted(want)


# --- one planner per tick ---------------------------------------------------------------------


def test_two_planners_one_plans(pg_engine):
    """While one transaction holds the planner lock another planner (and reconciler) skips
    at once, without waiting and without writing; once the first ends, the next one plans."""
    with Session(pg_engine) as first, Session(pg_engine) as second:
        try:
            team = Team(name="lock-team")
            second.add(team)
            second.add(Worker(id="lock-w", hostname="h", slots=1, gpus=1, gpu_memory_gb=80.0))
            second.flush()
            waiting = new_job(team.id, "job-lock", created_at=datetime.now(UTC))
            second.add(waiting)
            second.flush()
            assert try_planner_lock(first)
            tick = plan_tick(second)
            assert not tick.planned and tick.assignments == [] and waiting.worker_id is None
            assert reconcile(second).skipped
            first.rollback()  # the holder ends (commit, rollback or a dead connection alike)
            tick = plan_tick(second)
            assert tick.planned and [a.job_id for a in tick.assignments] == ["job-lock"]
            assert not try_planner_lock(first)  # now `second` holds it until its transaction ends
        finally:
            first.rollback()
            second.rollback()


# --- counts ------------------------------------------------------------------------------------


def test_counts_equal_a_recount_after_random_starts_ends_and_crashes(any_db):
    db, rng = any_db, random.Random(3)
    teams = [Team(name=f"c{i}", share=float(i + 1)) for i in range(3)]
    db.add_all(teams)
    for i in range(4):
        db.add(Worker(id=f"cw{i}", hostname="h", slots=3, gpus=2, gpu_memory_gb=80.0))
    db.flush()
    n = 0
    for step in range(150):
        op = rng.random()
        if op < 0.3:  # a job arrives
            n += 1
            db.add(new_job(rng.choice(teams).id, f"job-c{n:04d}", gpus=rng.choice([0, 1, 2]), created_at=datetime.now(UTC)))
        elif op < 0.45:  # a tick
            plan(db)
        elif op < 0.55:  # a tick whose planner dies before committing
            savepoint = db.begin_nested()
            plan(db)
            savepoint.rollback()
        else:
            live = db.scalars(select(Job).where(Job.worker_id.is_not(None))).all()
            if not live:
                continue
            job = rng.choice(live)
            if job.status == "queued":  # the worker claims it (a Core UPDATE, then the status write)
                runs.claim_job(db, job.id, job.worker_id, lease_seconds=60)
            elif op < 0.7:
                runs.finish(db, job.id, job.attempt, rng.choice(["succeeded", "failed", "paused"]))
            elif op < 0.8:  # the user cancels a running job, the runner honours it
                lifecycle.set_job_status(db, job.id, "cancelling")
                runs.finish(db, job.id, job.attempt, "cancelled")
            else:  # the worker crashes: its lease runs out and the reconciler re-queues or fails it
                job.lease_expires_at = datetime.now(UTC) - timedelta(seconds=1)
                db.flush()
                reconcile(db)
        db.flush()
        assert maintained(db) == recount(db), f"step {step}"
    assert any(maintained(db).used_slots.values()) and maintained(db).team_usage


# --- what a GET shows ----------------------------------------------------------------------------


def test_planner_writes_positions_reasons_and_expected_start(pg_session):
    db = pg_session
    a, b, c, d = Team(name="pos-a"), Team(name="pos-b", max_running_jobs=1), Team(name="pos-c"), Team(name="pos-d")
    db.add_all([a, b, c, d, Worker(id="busy", hostname="h", slots=1, gpus=1, gpu_memory_gb=24.0, last_heartbeat=NOW)])
    db.flush()
    finish_at = NOW + timedelta(minutes=7)
    db.add(new_job(b.id, "job-run", status="running", worker_id="busy", attempt=1, started_at=NOW - timedelta(minutes=3),
                   estimated_finish=finish_at))
    db.add(new_job(d.id, "job-d-done", status="succeeded", started_at=NOW - timedelta(hours=3), finished_at=NOW - timedelta(hours=1)))
    for i in range(3):  # the typical job takes a minute
        db.add(new_job(c.id, f"job-c-done{i}", status="succeeded", started_at=NOW - timedelta(seconds=600 + i),
                       finished_at=NOW - timedelta(seconds=540 + i)))
    a_jobs = [new_job(a.id, f"job-a{i:02d}", created_at=NOW - timedelta(seconds=100 - i)) for i in range(HEAD + 5)]
    b_job = new_job(b.id, "job-b", created_at=NOW - timedelta(seconds=500))
    huge = new_job(c.id, "job-huge", gpus=4, created_at=NOW - timedelta(seconds=900))
    d_job = new_job(d.id, "job-d", created_at=NOW - timedelta(seconds=950))
    db.add_all([*a_jobs, b_job, huge, d_job])
    db.flush()
    assert plan(db, now=NOW) == []
    first = job_object(a_jobs[0])  # what GET returns, read from the row
    assert (first.queue_position, first.queue_reason) == (1, "all fitting worker slots are busy")
    assert first.estimated_start == int(finish_at.timestamp())
    # b's job is ranked by fair share like any other (its turn comes once its limit allows).
    assert queue_info(b_job).reason == "team is at its running limit (1 jobs)"
    assert queue_info(huge).reason == "no live worker in the pool can run 4 GPU(s)"
    # Team a has more waiting jobs than one tick reads: the first HEAD are ranked, exactly
    # while every team's next job is known; d (2 h of slot-time used) would come after a's
    # unread jobs, so it gets no exact position, and a's unread jobs are left as they were.
    ranked = [queue_info(j).position for j in a_jobs]
    others = sorted(queue_info(j).position for j in (b_job, huge))
    assert sorted(ranked[:HEAD] + others) == list(range(1, HEAD + 3))
    assert ranked[HEAD:] == [None] * 5 and queue_info(a_jobs[-1]).reason == "waiting for the scheduler"
    assert queue_info(d_job).position is None
    # Once the slot frees, the head job is dispatched and says so.
    runs.finish(db, "job-run", 1, "succeeded")
    [got] = plan(db, now=NOW)
    assert got.job_id == a_jobs[0].id and queue_info(a_jobs[0]).reason == "dispatched to a worker, starting"


# --- query plans ---------------------------------------------------------------------------------


def _explain(db: Session, stmt) -> str:
    compiled = stmt.compile(dialect=db.get_bind().dialect)
    return "\n".join(r[0] for r in db.connection().exec_driver_sql(f"EXPLAIN {compiled}", compiled.params))


def test_query_plans_read_an_index_range_per_team(pg_session):
    """20 teams x 1,500 waiting jobs plus a few running: the head-of-line read, the running
    slot-time aggregate and the reconciler's stale-dispatch query never scan the jobs table."""
    db = pg_session
    db.execute(text("""
        INSERT INTO teams (id, name, share, created_at) SELECT 'xt' || t, 'xt' || t, 1, now() FROM generate_series(1, 20) t;
        INSERT INTO jobs (id, team_id, model, training_file_id, spec, spec_hash, seed, status, priority, gpus, attempt,
                          max_attempts, created_at, updated_at, held_slots, worker_id, held_worker_id)
        SELECT 'xj' || i, 'xt' || (i % 20 + 1), 'm', 'f', '{}', 'h', 0,
               CASE WHEN i % 500 = 0 THEN 'running' WHEN i % 7 = 0 THEN 'succeeded' ELSE 'queued' END,
               i % 3, 1, 0, 3, now() - i * interval '1 second', now(),
               CASE WHEN i % 500 = 0 THEN 1 ELSE 0 END,
               CASE WHEN i % 500 = 0 THEN 'w' END, CASE WHEN i % 500 = 0 THEN 'w' END
        FROM generate_series(1, 30000) i;
        ANALYZE jobs; ANALYZE teams;
    """))
    head = _explain(db, head_of_line(db, HEAD))
    assert "ix_jobs_waiting_head" in head and "Seq Scan on jobs" not in head, head
    assert "Sort" not in head, head  # the index gives each team's dispatch order
    # And the tick itself reads only the heads: HEAD rows per team, not 30,000.
    assert db.scalar(select(func.count()).select_from(head_of_line(db, HEAD).subquery())) == 20 * HEAD
    for name, stmt in (
        ("running slot-time", running_charge_query(NOW, NOW - timedelta(days=1), 60.0)),
        ("stale dispatches", select(Job.id).where(Job.held_worker_id.is_not(None), Job.status == "queued", Job.dispatched_at < NOW)),
    ):
        plan_text = _explain(db, stmt)
        assert "ix_jobs_held" in plan_text and "Seq Scan on jobs" not in plan_text, (name, plan_text)


def test_a_planner_that_stops_mid_tick_loses_nothing(monkeypatch):
    """A planner frozen inside its transaction (after assigning) keeps nothing: PostgreSQL ends
    its idle session, the assignment and the lock go with it, and the next planner assigns
    the same job."""
    from sqlalchemy.exc import DBAPIError

    from core.db import make_engine
    from core.services import planner
    from tests.conftest import fresh_database

    monkeypatch.setattr(planner, "LOCK_IDLE_TIMEOUT", timedelta(seconds=1))
    with fresh_database("frozen") as url:
        engine = make_engine(url)
        try:
            with Session(engine) as s:
                team = Team(name="frozen")
                s.add_all([team, Worker(id="fw", hostname="h", slots=1, gpus=1, gpu_memory_gb=80.0)])
                s.flush()
                s.add(new_job(team.id, "job-frozen", created_at=datetime.now(UTC)))
                s.commit()
            with Session(engine) as frozen, Session(engine) as next_planner:
                assert [a.job_id for a in plan(frozen)] == ["job-frozen"]
                assert plan_tick(next_planner).planned is False  # the frozen one holds the lock
                next_planner.rollback()
                time.sleep(2.0)  # frozen: no statement, no commit
                tick = plan_tick(next_planner)
                assert tick.planned and [(a.job_id, a.worker_id) for a in tick.assignments] == [("job-frozen", "fw")]
                next_planner.commit()
                with pytest.raises(DBAPIError):
                    frozen.commit()
            with Session(engine) as s:
                assert maintained(s) == recount(s) and maintained(s).used_slots == {"fw": 1}
        finally:
            engine.dispose()
