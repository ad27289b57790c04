"""Which queued job runs next, and on which worker — decided from SQL, never by broker order.

Order (DESIGN.md §3, issue 4): team fair share first, then priority, then age.
Fair share compares each team's *slot-time relative to its share* over a recent window
(stride scheduling): the next slot goes to the team that would have used the least per
share after taking it. Slots held right now are not enough: with fewer slots than teams,
a team whose job just ended holds zero and wins its slot back every time (the team that
got a slot first keeps it), and small shares are starved for good. Slot-time lets a team
that has not run yet go first, and over time gives each team its share.

A job is assigned to a worker that fits it (free GPUs on one host, GPU memory); the
assignment is written to the job row (worker_id + dispatched_at) in the same transaction
that decides it, and only then sent to that worker's queue. A queued job whose dispatch
was never claimed (the broker lost it) is re-dispatched by `reconcile`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
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
    if job.min_gpu_memory_gb is not None:
        return worker_gpu_memory_gb is not None and worker_gpu_memory_gb >= job.min_gpu_memory_gb
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


@dataclass
class QueueInfo:
    position: int | None
    reason: str | None
    estimated_start: datetime | None = None
    details: dict = field(default_factory=dict)


def explain(session: Session, job: Job, now: datetime | None = None, heartbeat_timeout: timedelta = timedelta(seconds=60)) -> QueueInfo:
    """Where a waiting job stands and why it is waiting, for the job object a client polls."""
    if job.status != JobStatus.QUEUED.value:
        return QueueInfo(None, None)
    if job.worker_id is not None:
        return QueueInfo(0, "dispatched to a worker, starting")
    now = now or utcnow()
    workers = live_workers(session, now, heartbeat_timeout)
    loads = team_loads(session, now)
    waiting = _waiting(session)
    mine = loads[job.team_id]
    # Position: jobs that would go first under the same ordering plan() uses.
    def rank(j: Job) -> tuple:
        return (*loads[j.team_id].key(slots_needed(j)), -j.priority, j.created_at, j.id)

    position = 1 + sum(1 for j in waiting if j.id != job.id and rank(j) < rank(job))
    if not any(job_fits(w.gpus, w.gpu_memory_gb, job) for w in workers):
        need = f"{job.gpus} GPU(s)" + (f" with >= {job.min_gpu_memory_gb:g} GB" if job.min_gpu_memory_gb else "")
        return QueueInfo(position, f"no live worker in the pool can run {need}")
    if mine.max_running is not None and mine.running_jobs >= mine.max_running:
        return QueueInfo(position, f"team is at its running limit ({mine.max_running} jobs)")
    if not any(w.fits(job) for w in workers):
        eta = _earliest_free(session, [w.id for w in workers if job_fits(w.gpus, w.gpu_memory_gb, job)])
        return QueueInfo(position, "all fitting worker slots are busy", eta)
    return QueueInfo(position, "waiting for the scheduler" if position == 1 else f"behind {position - 1} job(s) in fair-share order")


def _earliest_free(session: Session, worker_ids: list[str]) -> datetime | None:
    finishes = session.scalars(
        select(Job.estimated_finish).where(
            Job.worker_id.in_(worker_ids), Job.status.in_([s.value for s in ACTIVE]), Job.estimated_finish.is_not(None)
        )
    ).all()
    return min((as_utc(f) for f in finishes), default=None)


@dataclass
class ReconcileResult:
    redispatched: list[str] = field(default_factory=list)
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    retired_workers: list[str] = field(default_factory=list)


def reconcile(
    session: Session,
    now: datetime | None = None,
    dispatch_timeout: timedelta = timedelta(seconds=30),
    worker_timeout: timedelta | None = None,
) -> ReconcileResult:
    """Repair what a lost broker message or a dead worker left behind; SQL is the truth.

    - queued + dispatched but never claimed within `dispatch_timeout`: the message was lost
      (Redis flushed/restarted) or its worker died; forget the assignment so `plan` sends it
      again (a late duplicate is harmless: claims are conditional).
    - running/pausing/cancelling whose lease expired: the runner is gone. Re-queue as a new
      attempt (it resumes from its newest checkpoint), or fail once attempts are used up.
    - with `worker_timeout`: workers silent for longer are marked inactive.
    """
    from core.services.lifecycle import set_job_status
    from core.services.workers import retire_silent_workers

    now = now or utcnow()
    out = ReconcileResult()
    if worker_timeout is not None:
        out.retired_workers = retire_silent_workers(session, now, worker_timeout)
    stale_dispatch = session.scalars(
        select(Job).where(
            Job.status == JobStatus.QUEUED.value,
            Job.worker_id.is_not(None),
            Job.dispatched_at < now - dispatch_timeout,
        ).with_for_update(skip_locked=True)
    ).all()
    for job in stale_dispatch:
        job.worker_id = None
        job.dispatched_at = None
        out.redispatched.append(job.id)
    expired = session.scalars(
        select(Job).where(
            Job.status.in_([s.value for s in ACTIVE]),
            Job.lease_expires_at < now,
        ).with_for_update(skip_locked=True)
    ).all()
    for job in expired:
        who = job.worker_id
        if job.status == JobStatus.CANCELLING.value:
            set_job_status(session, job.id, JobStatus.CANCELLED, job=job,
                           message=f"Worker {who} stopped heartbeating while cancelling; job cancelled")
        elif job.attempt >= job.max_attempts:
            set_job_status(
                session, job.id, JobStatus.FAILED, job=job,
                message=f"Worker {who} was lost on attempt {job.attempt} of {job.max_attempts}; giving up",
                error={"code": "max_attempts_exceeded", "message": f"the job's worker was lost {job.attempt} times", "param": None},
            )
            out.failed.append(job.id)
        else:
            target = JobStatus.PAUSED if job.status == JobStatus.PAUSING.value else JobStatus.QUEUED
            set_job_status(session, job.id, target, job=job,
                           message=f"Lease of worker {who} expired on attempt {job.attempt}; re-queued to resume from its newest checkpoint")
            job.dispatched_at = None
            out.requeued.append(job.id)
    return out
