"""A job's metric series, stored so that a chart costs O(points shown), not O(steps logged).

Every Metric row carries `seq`, its 0-based rank by step within the job, assigned as the
point arrives. A downsampled read then needs no scan of the series: two index lookups find
the positions of the requested step range, the positions to show are computed in Python,
and the rows at exactly those positions are fetched by the (job_id, seq) index. The result
is the same evenly spaced sample a window-function ranking over the whole series gives
(first point of each of max_points - 1 equal buckets, plus the last point, always exact).

Invariant: for each job, the seqs are 0..n-1 in step order. Points arrive in step order in
practice (O(1) to place); a point for a new step below the newest one shifts the later
rows by one (O(rows after it), rare: a replayed step usually exists already and keeps its
place). Anything that deletes metric rows must renumber the job's series.
"""

from __future__ import annotations

from math import ceil

from sqlalchemy import ARRAY, Integer, Row, Select, cast, func, select, true, update
from sqlalchemy.orm import Session

from core.models import Metric


def position_for(session: Session, job_id: str, step: int) -> int:
    """The seq a NEW row for `step` takes; makes room for it if it lands mid-series.

    Call with the job row locked (runs._fenced), so two writers cannot take one position.
    """
    last = session.execute(
        select(Metric.step, Metric.seq).where(Metric.job_id == job_id).order_by(Metric.step.desc()).limit(1)
    ).first()
    if last is None:
        return 0
    if step > last.step:
        return last.seq + 1
    seq = session.scalar(select(func.min(Metric.seq)).where(Metric.job_id == job_id, Metric.step > step))
    session.execute(
        update(Metric)
        .where(Metric.job_id == job_id, Metric.step > step)
        .values(seq=Metric.seq + 1)
        .execution_options(synchronize_session="fetch")
    )
    return seq


def sample_positions(n: int, max_points: int) -> list[int]:
    """Which of n positions (0..n-1) a chart of at most max_points shows: all when they fit;
    else the first of each of max_points - 1 equal buckets over 0..n-2, and n-1 (a chart of
    a run must end where the run is, not one stride before it)."""
    if n <= max_points:
        return list(range(n))
    if max_points == 1:
        return [n - 1]
    m = max_points - 1
    return [ceil(j * (n - 1) / m) for j in range(m)] + [n - 1]


def _edge(session: Session, job_id: str, bound: int | None, *, low: bool) -> int | None:
    """seq of the first row with step >= bound (low) or the last with step <= bound."""
    stmt = select(Metric.seq).where(Metric.job_id == job_id)
    if bound is not None:
        stmt = stmt.where(Metric.step >= bound if low else Metric.step <= bound)
    return session.scalar(stmt.order_by(Metric.step.asc() if low else Metric.step.desc()).limit(1))


POINT = (Metric.step, Metric.created_at, Metric.values)


def _at_positions(session: Session, job_id: str, positions: list[int]) -> Select:
    """The rows at `positions`, each found by one (job_id, seq) index probe.

    On PostgreSQL a plain `seq = ANY(...)` is planned from statistics: for a job whose
    series grew since the last ANALYZE the planner may expect a few hundred rows and
    bitmap-scan the whole job (50 ms at 100,000 steps instead of 1). A LATERAL lookup per
    position, with one array parameter, leaves it no such choice. SQLite's planner probes
    the index for each value of an IN list by itself.
    """
    if session.get_bind().dialect.name != "postgresql":
        return select(*POINT).where(Metric.job_id == job_id, Metric.seq.in_(positions))
    wanted = func.unnest(cast(positions, ARRAY(Integer))).table_valued("seq").render_derived(name="wanted")
    row = select(*POINT).where(Metric.job_id == job_id, Metric.seq == wanted.c.seq).limit(1).lateral("point")
    return select(row.c.step, row.c.created_at, row.c["values"]).select_from(wanted).join(row, true())


def sample(session: Session, job_id: str, *, from_step: int | None, to_step: int | None, max_points: int) -> list[Row]:
    """At most max_points points (rows of step, created_at, values) of the job's series
    within [from_step, to_step], by step. Plain rows, not ORM objects: they are only read."""
    first = _edge(session, job_id, from_step, low=True)
    last = _edge(session, job_id, to_step, low=False)
    if first is None or last is None or first > last:
        return []
    n = last - first + 1
    if n <= max_points:
        stmt = select(*POINT).where(Metric.job_id == job_id, Metric.seq.between(first, last))
    else:
        stmt = _at_positions(session, job_id, [first + p for p in sample_positions(n, max_points)])
    return sorted(session.execute(stmt), key=lambda r: r.step)
