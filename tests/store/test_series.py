"""core.services.series on PostgreSQL and SQLite: positions stay the rank by step whatever
order points arrive in, and a sample is three indexed statements whatever the series' length."""

from __future__ import annotations

import random

from sqlalchemy import event, select

from core.models import Job, Metric
from core.services import auth, series


def add_points(session, job_id: str, steps) -> None:
    for step in steps:
        session.add(Metric(job_id=job_id, step=step, seq=series.position_for(session, job_id, step), values={"loss": 1.0 / step}))
        session.flush()


def new_job(session, name: str) -> Job:
    team = auth.create_team(session, name)
    job = Job(team_id=team.id, model="org/m", training_file_id="file-x", spec={}, spec_hash="h", status="running")
    session.add(job)
    session.flush()
    return job


def test_positions_stay_ranks_whatever_the_arrival_order(db_session):
    job = new_job(db_session, "series-order")
    steps = list(range(10, 410, 10))
    arrival = steps[:20] + random.Random(7).sample(steps[20:], 20)  # in order, then shuffled
    add_points(db_session, job.id, arrival)
    rows = db_session.execute(select(Metric.step, Metric.seq).where(Metric.job_id == job.id).order_by(Metric.step)).all()
    assert [r.seq for r in rows] == list(range(len(steps))) and [r.step for r in rows] == steps


def test_sample_is_three_statements_and_exact_at_the_ends(db_session):
    job = new_job(db_session, "series-cost")
    add_points(db_session, job.id, range(1, 2001))
    statements = []

    def count(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    bind = db_session.get_bind()
    event.listen(bind, "after_cursor_execute", count)
    try:
        got = series.sample(db_session, job.id, from_step=None, to_step=None, max_points=20)
        window = series.sample(db_session, job.id, from_step=1000, to_step=1100, max_points=11)
    finally:
        event.remove(bind, "after_cursor_execute", count)
    assert [m.step for m in got] == [1 + p for p in series.sample_positions(2000, 20)]
    assert len(got) == 20 and got[0].step == 1 and got[-1].step == 2000
    assert [m.step for m in window] == list(range(1000, 1101, 10))
    assert len(statements) == 6  # per sample: the two edges of the range, then the rows shown


def test_sample_positions_are_even_and_end_at_the_last():
    assert series.sample_positions(5, 10) == [0, 1, 2, 3, 4]
    assert series.sample_positions(1000, 1) == [999]
    assert series.sample_positions(11, 3) == [0, 5, 10]
    pos = series.sample_positions(10_000, 200)
    gaps = {b - a for a, b in zip(pos, pos[1:])}
    assert len(pos) == 200 and pos[-1] == 9_999 and max(gaps) - min(gaps) <= 1
