"""The planner as it was before issue 9, kept verbatim as the reference the new one must agree
with (tests/scheduling/test_planner_equivalence.py): it loads every live worker with a row
lock, every running job, a day of finished jobs and every waiting job on each call."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from core.models import Job, Team, Worker, as_utc, utcnow
from core.states import ACTIVE, JobStatus

USAGE_WINDOW = timedelta(hours=24)


@dataclass
class WorkerCapacity:
    id: str
    slots: int
    gpus: int
    gpu_memory_gb: float | None
    used: int = 0

    @property
    def free(self) -> int:
        return self.slots - self.used

    def fits(self, job: Job) -> bool:
        return job_fits(self.gpus, self.gpu_memory_gb, job) and self.free >= slots_needed(job)


def slots_needed(job: Job) -> int:
    """A job holds one slot per GPU it asked for (at least one: a CPU job still takes a slot)."""
    return max(job.gpus or 0, 1)


def job_fits(worker_gpus: int, worker_gpu_memory_gb: float | None, job: Job) -> bool:
    """Whether a worker of this shape could ever run the job (ignoring what is busy).

    A CPU worker (0 GPUs) takes jobs that ask for at most one device and no GPU memory,
    so the embedded CPU mode runs default specs.
    """
    if worker_gpus == 0:
        return (job.gpus or 0) <= 1 and job.min_gpu_memory_gb is None
    if (job.gpus or 0) > worker_gpus:
        return False
    # The fit plan (issue 12): a GPU worker needs the larger of the client's minimum and the
    # memory the plan says one GPU needs; a CPU worker ignores the planned figure.
    needs = [m for m in (job.min_gpu_memory_gb, job.planned_gpu_memory_gb) if m is not None]
    if needs:
        return worker_gpu_memory_gb is not None and worker_gpu_memory_gb >= max(needs)
    return True


def _holds_slot(job: Job) -> bool:
    return job.status in ACTIVE or (job.status == JobStatus.QUEUED and job.worker_id is not None)


def live_workers(
    session: Session, now: datetime, heartbeat_timeout: timedelta, lock: bool = False
) -> list[WorkerCapacity]:
    """`lock=True` (the planner) row-locks the pool so concurrent planners cannot double-book a slot."""
    query = select(Worker).where(Worker.active.is_(True), Worker.last_heartbeat >= now - heartbeat_timeout)
    rows = session.scalars(query.order_by(Worker.id).with_for_update() if lock else query).all()
    workers = {w.id: WorkerCapacity(w.id, w.slots, w.gpus, w.gpu_memory_gb) for w in rows}
    held = session.scalars(
        select(Job).where(
            Job.worker_id.in_(list(workers)),
            or_(Job.status.in_([s.value for s in ACTIVE]), Job.status == JobStatus.QUEUED.value),
        )
    ).all()
    for job in held:
        if _holds_slot(job):
            workers[job.worker_id].used += slots_needed(job)
    return list(workers.values())


DEFAULT_JOB_SECONDS = 60.0  # what a slot is expected to cost before any job finished in the window


@dataclass
class TeamLoad:
    share: float
    max_running: int | None
    running_slots: int = 0
    running_jobs: int = 0
    usage: float = 0.0  # slot-seconds charged over the usage window
    unit: float = DEFAULT_JOB_SECONDS  # what one more slot is expected to cost

    def key(self, adding: int = 1) -> tuple[float]:
        """Slot-seconds per share the team would have used after taking `adding` more slots."""
        return ((self.usage + adding * self.unit) / self.share,)

    def charge(self, slots: int) -> None:
        self.running_slots += slots
        self.running_jobs += 1
        self.usage += slots * self.unit


def team_loads(session: Session, now: datetime) -> dict[str, TeamLoad]:
    """Each team's slot-time over the window: finished jobs at their length, running (or
    dispatched) ones at least at the typical job length, charged up front.

    Charging a slot when it is handed out, not as it is used, is what makes shares hold:
    compared on time already used, a job that has just started costs nothing, and a team
    could take every free slot in one pass."""
    since = now - USAGE_WINDOW
    jobs = session.scalars(
        select(Job).where(
            or_(
                Job.status.in_([s.value for s in ACTIVE]),
                Job.worker_id.is_not(None),
                Job.finished_at >= since,
            )
        )
    ).all()
    lengths = sorted(
        (as_utc(j.finished_at) - as_utc(j.started_at)).total_seconds()
        for j in jobs if j.started_at is not None and j.finished_at is not None
    )
    unit = max(lengths[len(lengths) // 2], 1.0) if lengths else DEFAULT_JOB_SECONDS
    loads = {
        t.id: TeamLoad(share=max(t.share or 1.0, 1e-6), max_running=t.max_running_jobs, unit=unit)
        for t in session.scalars(select(Team)).all()
    }
    for job in jobs:
        load, slots = loads[job.team_id], slots_needed(job)
        start = max(as_utc(job.started_at), since) if job.started_at is not None else now
        if _holds_slot(job):
            load.running_slots += slots
            load.running_jobs += 1
            load.usage += max((now - start).total_seconds(), unit) * slots
        elif job.started_at is not None and job.finished_at is not None:
            load.usage += max((as_utc(job.finished_at) - start).total_seconds(), 0.0) * slots
    return loads


def _waiting(session: Session) -> list[Job]:
    return list(
        session.scalars(
            select(Job)
            .where(Job.status == JobStatus.QUEUED.value, Job.worker_id.is_(None))
            .order_by(Job.priority.desc(), Job.created_at, Job.id)
        ).all()
    )


@dataclass
class Assignment:
    job_id: str
    worker_id: str


def plan(session: Session, now: datetime | None = None, heartbeat_timeout: timedelta = timedelta(seconds=60)) -> list[Assignment]:
    """Assign waiting jobs to free worker slots in fair-share order; writes the assignment
    to the rows (caller commits, then sends each job to its worker's queue)."""
    now = now or utcnow()
    workers = live_workers(session, now, heartbeat_timeout, lock=True)
    if not any(w.free > 0 for w in workers):
        return []
    loads = team_loads(session, now)
    by_team: dict[str, list[Job]] = defaultdict(list)
    for job in _waiting(session):  # already priority-then-age ordered within a team
        by_team[job.team_id].append(job)

    out: list[Assignment] = []
    while by_team and any(w.free > 0 for w in workers):
        eligible = [
            t for t in by_team
            if loads[t].max_running is None or loads[t].running_jobs < loads[t].max_running
        ]
        if not eligible:
            break
        # Fair share first; then the best head-of-line job's priority and age.
        eligible.sort(key=lambda t: (*loads[t].key(slots_needed(by_team[t][0])), -by_team[t][0].priority, by_team[t][0].created_at))
        placed = False
        for team_id in eligible:
            queue = by_team[team_id]
            for i, job in enumerate(queue):
                worker = next((w for w in workers if w.fits(job)), None)
                if worker is None:
                    continue
                job.worker_id = worker.id
                job.dispatched_at = now
                worker.used += slots_needed(job)
                loads[team_id].charge(slots_needed(job))
                out.append(Assignment(job.id, worker.id))
                del queue[i]
                if not queue:
                    del by_team[team_id]
                placed = True
                break
            if placed:
                break
        if not placed:
            break
    return out
