"""Counts the planner reads instead of scanning jobs: slots held per worker, and each team's
finished slot-time per hour.

Why counts: at a thousand workers the planner cannot load every running job to learn which
slots are free, nor re-read a day of finished jobs for fair share, on every tick. The counts
move in the same transaction as the job write that changes them, so a rollback (a planner or
runner dying mid-transaction) takes the count change with it.

How: each job row remembers the slot it is counted against (`held_worker_id`, `held_slots`).
An ORM hook compares that with what the row's status and worker say and applies the
difference to `Worker.used_slots` — so every ORM write of a job, from any service or test,
keeps the count right, and a Core UPDATE that bypassed the ORM is caught at the row's next
ORM write (the difference is still there). When a job ends, its slot-seconds are added to
its team's hour in `team_usage`. `recount` rebuilds the same figures from job rows (a full
scan); the tests compare it with the maintained counts after random starts, ends and crashes.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import event, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session, attributes

from core.models import Job, TeamUsage, Worker, as_utc
from core.states import ACTIVE, JobStatus

_ACTIVE = frozenset(s.value for s in ACTIVE)


def slots_needed(gpus: int | None) -> int:
    """A job holds one slot per GPU it asked for (at least one: a CPU job still takes a slot)."""
    return max(gpus or 0, 1)


def holds_slot(status: str, worker_id: str | None) -> bool:
    """Running (or stopping), or dispatched to a worker and not yet claimed."""
    return worker_id is not None and (status in _ACTIVE or status == JobStatus.QUEUED.value)


def hour_of(dt: datetime) -> datetime:
    return as_utc(dt).replace(minute=0, second=0, microsecond=0)


def job_slot_seconds(job: Job) -> float:
    """What a finished job cost its team: its wall time from first start to end, per slot."""
    return max((as_utc(job.finished_at) - as_utc(job.started_at)).total_seconds(), 0.0) * slots_needed(job.gpus)


def add_team_usage(conn: Connection, team_id: str, finished_at: datetime, slot_seconds: float) -> None:
    """Upsert into the team's hour (one statement; concurrent enders add, never overwrite)."""
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    stmt = insert(TeamUsage).values(team_id=team_id, bucket=hour_of(finished_at), slot_seconds=slot_seconds)
    conn.execute(stmt.on_conflict_do_update(
        index_elements=[TeamUsage.team_id, TeamUsage.bucket],
        set_={"slot_seconds": TeamUsage.slot_seconds + stmt.excluded.slot_seconds},
    ))


def _move_slots(conn: Connection, job: Job) -> None:
    want_worker = job.worker_id if holds_slot(job.status, job.worker_id) else None
    want = (want_worker, slots_needed(job.gpus) if want_worker else 0)
    have = (job.held_worker_id, job.held_slots or 0)
    if want == have:
        return
    if have[0] is not None:
        conn.execute(update(Worker).where(Worker.id == have[0]).values(used_slots=Worker.used_slots - have[1]))
    if want[0] is not None:
        conn.execute(update(Worker).where(Worker.id == want[0]).values(used_slots=Worker.used_slots + want[1]))
    job.held_worker_id, job.held_slots = want


def _ended_now(job: Job, inserting: bool) -> bool:
    if job.finished_at is None or job.started_at is None:
        return False
    if inserting:
        return True
    before = attributes.get_history(job, "finished_at").deleted
    return attributes.get_history(job, "finished_at").has_changes() and not (before and before[0] is not None)


@event.listens_for(Job, "before_insert")
def _job_inserted(_mapper, conn: Connection, job: Job) -> None:
    _move_slots(conn, job)
    if _ended_now(job, inserting=True):
        add_team_usage(conn, job.team_id, job.finished_at, job_slot_seconds(job))


@event.listens_for(Job, "before_update")
def _job_updated(_mapper, conn: Connection, job: Job) -> None:
    _move_slots(conn, job)
    if _ended_now(job, inserting=False):
        add_team_usage(conn, job.team_id, job.finished_at, job_slot_seconds(job))


@event.listens_for(Job, "after_delete")
def _job_deleted(_mapper, conn: Connection, job: Job) -> None:
    if job.held_worker_id is not None:
        conn.execute(update(Worker).where(Worker.id == job.held_worker_id)
                     .values(used_slots=Worker.used_slots - (job.held_slots or 0)))


# --- the recount: the truth the counts must equal ---------------------------------------


@dataclass
class Counts:
    used_slots: dict[str, int]  # worker id -> slots
    team_usage: dict[tuple[str, datetime], float]  # (team, hour) -> slot-seconds

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Counts):
            return NotImplemented
        nonzero = lambda d: {k: v for k, v in d.items() if v}  # noqa: E731
        usage = lambda d: {k: round(v, 3) for k, v in nonzero(d).items()}  # noqa: E731
        return nonzero(self.used_slots) == nonzero(other.used_slots) and usage(self.team_usage) == usage(other.team_usage)


def maintained(session: Session) -> Counts:
    used = dict(session.execute(select(Worker.id, Worker.used_slots)).all())
    usage = {(t, hour_of(b)): s for t, b, s in session.execute(select(TeamUsage.team_id, TeamUsage.bucket, TeamUsage.slot_seconds))}
    return Counts(used, usage)


def recount(session: Session) -> Counts:
    """What the counts should be, from the job rows alone (a full scan: checks and repair only)."""
    session.flush()
    used: dict[str, int] = defaultdict(int)
    for status, worker_id, gpus in session.execute(
        select(Job.status, Job.worker_id, Job.gpus).where(Job.worker_id.is_not(None))
    ):
        if holds_slot(status, worker_id):
            used[worker_id] += slots_needed(gpus)
    usage: dict[tuple[str, datetime], float] = defaultdict(float)
    for job in session.scalars(select(Job).where(Job.finished_at.is_not(None), Job.started_at.is_not(None))):
        usage[(job.team_id, hour_of(job.finished_at))] += job_slot_seconds(job)
    return Counts(dict(used), dict(usage))
