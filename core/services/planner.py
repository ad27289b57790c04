"""Which queued job runs next, and on which worker — one planner per tick, reading only what
the decision needs.

Order (DESIGN.md §3, issue 4): team fair share first, then priority, then age. Fair share
compares each team's *slot-time relative to its share* over a recent window (stride
scheduling): the next slot goes to the team that would have used the least per share after
taking it. Slots held right now are not enough: with fewer slots than teams, a team whose job
just ended holds zero and wins its slot back every time, and small shares starve. A job is
assigned to the first worker (by id) that fits it (free slots, GPUs on one host, GPU memory).

Why it is built this way (issue 9, a pool of 1,000 workers and 100,000 queued jobs):

- One planner at a time: a tick takes a PostgreSQL advisory try-lock for its transaction;
  every other worker skips that tick instead of queueing behind row locks. If the planner
  dies mid-tick its transaction rolls back (assignments, counts and the lock with it) and
  the next holder plans again. SQLite (embedded, one machine) serialises writers itself.
- No full scans: free slots come from `Worker.used_slots`, finished slot-time from the
  `team_usage` hours (both maintained by core.services.slot_accounting), and the waiting
  jobs read are each team's first few in dispatch order (`LATERAL ... LIMIT k` on the
  partial index `ix_jobs_waiting_head`); a team whose first few do not fit is paged further.
  What is still read per tick grows with the jobs *running* (a slot-time aggregate over
  `ix_jobs_held`), never with the queue or the day's history.
- The waiting jobs' position, reason and expected start are written by the planner onto
  the job rows it read (at most once a second in the workers' loop), so a GET of a job
  reads three columns instead of re-planning.

The decisions are those of the former whole-table planner, kept in tests/scheduling/
reference.py and compared on random pools and queues by tests/scheduling/test_planner.py.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from sqlalchemy import and_, func, or_, select, text, true, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.util import identity_key

from core.models import Job, Team, TeamUsage, Worker, as_utc, utcnow
from core.notify import is_postgres
from core.services.slot_accounting import hour_of, slots_needed
from core.states import ACTIVE, JobStatus

USAGE_WINDOW = timedelta(hours=24)
DEFAULT_JOB_SECONDS = 60.0  # what a slot is expected to cost before any job finished in the window
HEAD = 8  # waiting jobs read (and ranked for GET) per team each tick
MAX_PAGE = 4096

#: How long the planner's transaction may sit idle before PostgreSQL ends it (and the lock).
LOCK_IDLE_TIMEOUT = timedelta(seconds=10)
#: pg_advisory_xact_lock key of the planner and the reconciler ("tuneforg" as a bigint).
PLANNER_LOCK = int.from_bytes(b"tuneforg", "big") & 0x7FFF_FFFF_FFFF_FFFF


@dataclass(slots=True)
class Waiting:
    """A waiting job as the planner reads it: plain columns, no ORM object, no JSON spec."""

    id: str
    team_id: str
    priority: int
    created_at: datetime
    gpus: int
    min_gpu_memory_gb: float | None
    planned_gpu_memory_gb: float | None
    queue_position: int | None
    queue_reason: str | None
    estimated_start: datetime | None


_WAITING_COLUMNS = (Job.id, Job.team_id, Job.priority, Job.created_at, Job.gpus, Job.min_gpu_memory_gb,
                    Job.planned_gpu_memory_gb, Job.queue_position, Job.queue_reason, Job.estimated_start)


def try_planner_lock(session: Session) -> bool:
    """The planner's (and reconciler's) turn for this transaction, or False when another
    process holds it. Re-entrant within one transaction; released at commit or rollback."""
    if not is_postgres(session):
        return True
    if not session.scalar(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": PLANNER_LOCK}):
        return False
    # A holder that stops mid-transaction (frozen, partitioned) must not stop the pool: the
    # server ends its session, and with it the transaction and the lock, after this long.
    session.execute(text(f"SET LOCAL idle_in_transaction_session_timeout = '{int(LOCK_IDLE_TIMEOUT.total_seconds() * 1000)}ms'"))
    return True


# --- fit ------------------------------------------------------------------------------------


def job_fits(worker_gpus: int, worker_gpu_memory_gb: float | None, job: Job | Waiting) -> bool:
    """Whether a worker of this shape could ever run the job (ignoring what is busy).

    A CPU worker (0 GPUs) takes jobs that ask for at most one device and no GPU memory,
    so the embedded CPU mode runs default specs; it ignores the job's planned GPU memory
    (a small job runs there in the CPU mode). A GPU worker needs the client's
    `min_gpu_memory_gb` and the memory the fit plan says one GPU needs
    (`planned_gpu_memory_gb`, core.services.fit), whichever is larger.
    """
    if worker_gpus == 0:
        return (job.gpus or 0) <= 1 and job.min_gpu_memory_gb is None
    if (job.gpus or 0) > worker_gpus:
        return False
    need = gpu_memory_needed(job)
    if need is not None:
        return worker_gpu_memory_gb is not None and worker_gpu_memory_gb >= need
    return True


def gpu_memory_needed(job: Job | Waiting) -> float | None:
    """The GPU memory (GiB, as Worker.gpu_memory_gb) a GPU worker must have for the job."""
    asked, planned = job.min_gpu_memory_gb, job.planned_gpu_memory_gb
    if asked is None or planned is None:
        return asked if planned is None else planned
    return max(asked, planned)


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
        return job_fits(self.gpus, self.gpu_memory_gb, job) and self.free >= slots_needed(job.gpus)


def is_live(now: datetime, heartbeat_timeout: timedelta):
    return and_(Worker.active.is_(True), Worker.last_heartbeat >= now - heartbeat_timeout)


def free_workers(session: Session, now: datetime, heartbeat_timeout: timedelta) -> list[WorkerCapacity]:
    """Live workers with a free slot, by id, from their maintained counts (no job rows; in a
    busy pool, a handful of rows)."""
    rows = session.execute(
        select(Worker.id, Worker.slots, Worker.gpus, Worker.gpu_memory_gb, Worker.used_slots)
        .where(is_live(now, heartbeat_timeout), Worker.used_slots < Worker.slots).order_by(Worker.id)
    )
    return [WorkerCapacity(*row) for row in rows]


def pool_shapes(session: Session, now: datetime, heartbeat_timeout: timedelta) -> set[tuple[int, float | None]]:
    """The (GPUs, GPU memory) shapes of the live pool: whether any worker could ever run a job."""
    return set(session.execute(select(Worker.gpus, Worker.gpu_memory_gb).where(is_live(now, heartbeat_timeout)).distinct()).all())


def _shape(job: Job | Waiting) -> tuple[int, float | None, float | None]:
    return job.gpus or 0, job.min_gpu_memory_gb, job.planned_gpu_memory_gb


# --- fair share -----------------------------------------------------------------------------


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

    @property
    def at_limit(self) -> bool:
        return self.max_running is not None and self.running_jobs >= self.max_running


@dataclass
class PlanCache:
    """What a planner process keeps between its ticks: the typical job length (the median of
    the window's finished jobs) changes slowly and costs a scan of the window, so it is
    refreshed at most every `ttl`. Without a cache (tests, one-off calls) it is read fresh."""

    ttl: timedelta = timedelta(seconds=60)
    unit: float | None = None
    at: datetime | None = None
    #: Queue positions are rewritten at most this often: event-driven ticks come many times a
    #: second in a large pool, and each ranking rewrites up to HEAD rows per team.
    rank_every: timedelta = timedelta(seconds=1)
    ranked_at: datetime | None = None

    def rank_due(self, now: datetime) -> bool:
        if self.ranked_at is not None and now - self.ranked_at < self.rank_every:
            return False
        self.ranked_at = now
        return True

    def typical_job_seconds(self, session: Session, now: datetime) -> float:
        if self.unit is None or self.at is None or now - self.at > self.ttl:
            self.unit, self.at = typical_job_seconds(session, now), now
        return self.unit


def typical_job_seconds(session: Session, now: datetime) -> float:
    """The (upper) median length of the jobs that finished within the window, at least 1 s."""
    finished = and_(Job.finished_at >= now - USAGE_WINDOW, Job.started_at.is_not(None))
    if is_postgres(session):  # a day of a large pool's jobs: sorted in the database, one row back
        n = session.scalar(select(func.count()).where(finished))
        if not n:
            return DEFAULT_JOB_SECONDS
        length = func.extract("epoch", Job.finished_at - Job.started_at)
        median = session.scalar(select(length).where(finished).order_by(length).offset(n // 2).limit(1))
        return max(float(median), 1.0)
    lengths = sorted((as_utc(f) - as_utc(s)).total_seconds() for s, f in session.execute(select(Job.started_at, Job.finished_at).where(finished)))
    return max(lengths[len(lengths) // 2], 1.0) if lengths else DEFAULT_JOB_SECONDS


def team_loads(session: Session, now: datetime, unit: float) -> dict[str, TeamLoad]:
    """Each team's slot-time over the window: finished jobs from the hourly rollup, running
    (or dispatched) ones at least at the typical job length, charged up front.

    Charging a slot when it is handed out, not as it is used, is what makes shares hold:
    compared on time already used, a job that has just started costs nothing, and a team
    could take every free slot in one pass.

    The rollup counts a finished job in the hour it ended, whole: the window's oldest hour
    is included in full (the former planner cut at the exact second and clipped a job that
    started before the window; both differ only for jobs ending 24-25 h ago)."""
    since = now - USAGE_WINDOW
    loads = {
        tid: TeamLoad(share=max(share or 1.0, 1e-6), max_running=max_running, unit=unit)
        for tid, share, max_running in session.execute(select(Team.id, Team.share, Team.max_running_jobs))
    }
    finished = session.execute(
        select(TeamUsage.team_id, func.sum(TeamUsage.slot_seconds)).where(TeamUsage.bucket >= hour_of(since)).group_by(TeamUsage.team_id)
    )
    for team_id, seconds in finished:
        loads[team_id].usage += seconds or 0.0
    for team_id, jobs, slots, charge in _running_charge(session, now, since, unit):
        load = loads[team_id]
        load.running_jobs += jobs
        load.running_slots += slots
        load.usage += charge
    return loads


def running_charge_query(now: datetime, since: datetime, unit: float):
    start = func.greatest(func.coalesce(Job.started_at, now), since)
    charge = Job.held_slots * func.greatest(func.extract("epoch", now - start), unit)
    return (select(Job.team_id, func.count(), func.sum(Job.held_slots), func.sum(charge))
            .where(Job.held_worker_id.is_not(None)).group_by(Job.team_id))


def _running_charge(session: Session, now: datetime, since: datetime, unit: float):
    """(team, jobs, slots, slot-seconds) of the jobs holding slots: each charged for its run so
    far (from its first start, or the window's start), but at least the typical job length.

    Summed inside PostgreSQL (thousands of running jobs at pool scale, one row per team
    back); SQLite, the embedded single-machine mode, sums the same formula here."""
    held = Job.held_worker_id.is_not(None)
    if is_postgres(session):
        return session.execute(running_charge_query(now, since, unit)).all()
    out: dict[str, list] = defaultdict(lambda: [0, 0, 0.0])
    for team_id, started_at, slots in session.execute(select(Job.team_id, Job.started_at, Job.held_slots).where(held)):
        start = max(as_utc(started_at), since) if started_at is not None else now
        row = out[team_id]
        row[0] += 1
        row[1] += slots
        row[2] += max((now - start).total_seconds(), unit) * slots
    return [(t, *row) for t, row in out.items()]


# --- the waiting jobs: each team's head of line ---------------------------------------------


def _waiting(*extra):
    return and_(Job.status == JobStatus.QUEUED.value, Job.worker_id.is_(None), *extra)


_ORDER = (Job.priority.desc(), Job.created_at, Job.id)


def _load(session: Session, condition, limit: int | None = None) -> list[Waiting]:
    stmt = select(*_WAITING_COLUMNS).where(condition).order_by(Job.team_id, *_ORDER)
    return [Waiting(*row) for row in session.execute(stmt.limit(limit) if limit else stmt)]


def head_of_line(session: Session, k: int):
    """Each team's first `k` waiting jobs (the Waiting columns), one index range per team."""
    if is_postgres(session):
        head = select(*_WAITING_COLUMNS).where(Job.team_id == Team.id, _waiting()).order_by(*_ORDER).limit(k).lateral("head")
        return select(*head.c).select_from(Team).join(head, true())
    rn = func.row_number().over(partition_by=Job.team_id, order_by=_ORDER).label("rn")
    ranked = select(*_WAITING_COLUMNS, rn).where(_waiting()).subquery()
    return select(*[ranked.c[c.key] for c in _WAITING_COLUMNS]).where(ranked.c.rn <= k)


@dataclass
class TeamQueue:
    """A team's waiting jobs in dispatch order, read a page at a time."""

    team_id: str
    jobs: list[Waiting]
    more: bool  # rows exist after the last one read
    page: int = HEAD
    last: Waiting | None = None

    def __post_init__(self) -> None:
        self.last = self.jobs[-1] if self.jobs else None

    def fetch_more(self, session: Session) -> bool:
        if not self.more or self.last is None:
            return False
        self.page = min(self.page * 4, MAX_PAGE)
        p, c, i = self.last.priority, self.last.created_at, self.last.id
        after = or_(Job.priority < p, and_(Job.priority == p, or_(Job.created_at > c, and_(Job.created_at == c, Job.id > i))))
        rows = _load(session, _waiting(Job.team_id == self.team_id, after), self.page)
        self.jobs.extend(rows)
        self.more = len(rows) == self.page
        self.last = rows[-1] if rows else self.last
        return bool(rows)

    def head(self, session: Session) -> Waiting | None:
        if not self.jobs:
            self.fetch_more(session)
        return self.jobs[0] if self.jobs else None


def read_queues(session: Session, k: int = HEAD) -> dict[str, TeamQueue]:
    by_team: dict[str, list[Waiting]] = defaultdict(list)
    for row in session.execute(head_of_line(session, k)):
        by_team[row.team_id].append(Waiting(*row))
    for jobs in by_team.values():  # dispatch order; SQL does not promise the LATERAL's row order
        jobs.sort(key=lambda j: (-j.priority, as_utc(j.created_at)))
    return {t: TeamQueue(t, jobs, more=len(jobs) == k, page=k) for t, jobs in by_team.items()}


# --- the plan -------------------------------------------------------------------------------


@dataclass
class Assignment:
    job_id: str
    worker_id: str


@dataclass
class Tick:
    """What a tick saw, for its caller's log and the benchmark."""

    assignments: list[Assignment] = field(default_factory=list)
    planned: bool = False  # False: another process held the planner lock
    capped: bool = False  # stopped at max_assignments with work left


def plan(
    session: Session,
    now: datetime | None = None,
    heartbeat_timeout: timedelta = timedelta(seconds=60),
    *,
    cache: PlanCache | None = None,
    max_assignments: int | None = None,
) -> list[Assignment]:
    """Assign waiting jobs to free worker slots in fair-share order and rank the rest; writes
    the assignments and queue positions to the rows (caller commits, then sends each job to
    its worker's queue). Returns [] without planning when another process plans."""
    return plan_tick(session, now, heartbeat_timeout, cache=cache, max_assignments=max_assignments).assignments


def plan_tick(
    session: Session,
    now: datetime | None = None,
    heartbeat_timeout: timedelta = timedelta(seconds=60),
    *,
    cache: PlanCache | None = None,
    max_assignments: int | None = None,
) -> Tick:
    now = now or utcnow()
    tick = Tick()
    if not try_planner_lock(session):
        return tick
    tick.planned = True
    cache = cache or PlanCache(ttl=timedelta(0), rank_every=timedelta(0))
    unit = cache.typical_job_seconds(session, now)
    free = free_workers(session, now, heartbeat_timeout)
    loads = team_loads(session, now, unit)
    queues = read_queues(session)
    if free:
        picked: list[tuple[Waiting, WorkerCapacity]] = []
        tick.capped = _assign(session, queues, loads, free, max_assignments, picked)
        tick.assignments = _dispatch(session, picked, now)
    if cache.rank_due(now):
        _rank(session, queues, loads, free, pool_shapes(session, now, heartbeat_timeout), now - heartbeat_timeout)
    return tick


def _assign(session, queues, loads, free, max_assignments, out) -> bool:
    """The fair-share loop of the former planner, over lazily paged team queues. A job shape
    that fitted no free worker is not tried again this tick: slots only fill up."""
    misfits: set[tuple[int, float | None, float | None]] = set()
    while any(w.free > 0 for w in free):
        heads = {t: q.head(session) for t, q in queues.items()}
        eligible = [t for t, h in heads.items() if h is not None and not loads[t].at_limit]
        if not eligible:
            return False
        if max_assignments is not None and len(out) >= max_assignments:
            return True
        eligible.sort(key=lambda t: (*loads[t].key(slots_needed(heads[t].gpus)), -heads[t].priority, heads[t].created_at))
        placed = False
        for team_id in eligible:
            queue, i = queues[team_id], 0
            while i < len(queue.jobs) or queue.fetch_more(session):
                job = queue.jobs[i]
                worker = None if _shape(job) in misfits else next((w for w in free if w.fits(job)), None)
                if worker is None:
                    misfits.add(_shape(job))
                    i += 1
                    continue
                worker.used += slots_needed(job.gpus)
                loads[team_id].charge(slots_needed(job.gpus))
                out.append((job, worker))
                del queue.jobs[i]
                placed = True
                break
            if placed:
                break
        if not placed:
            return False
    return False


def _dispatch(session: Session, picked: list[tuple[Waiting, WorkerCapacity]], now: datetime) -> list[Assignment]:
    """Write the assignments and their slot counts. Each UPDATE re-checks that the job still
    waits (a user may have cancelled it since it was read); one that does not is dropped."""
    out: list[Assignment] = []
    used: dict[str, int] = defaultdict(int)
    for job, worker in picked:
        n = slots_needed(job.gpus)
        done = session.execute(
            update(Job).where(Job.id == job.id, _waiting())
            .values(worker_id=worker.id, dispatched_at=now, held_worker_id=worker.id, held_slots=n,
                    queue_position=None, queue_reason=None, estimated_start=None)
            .execution_options(synchronize_session=False)
        ).rowcount
        _expire(session, Job, job.id)
        if done == 1:
            used[worker.id] += n
            out.append(Assignment(job.id, worker.id))
    for worker_id, n in sorted(used.items()):  # one order for every planner: no lock cycles
        session.execute(update(Worker).where(Worker.id == worker_id).values(used_slots=Worker.used_slots + n)
                        .execution_options(synchronize_session=False))
        _expire(session, Worker, worker_id)
    return out


def _rank(session: Session, queues: dict[str, TeamQueue], loads: dict[str, TeamLoad], free: list[WorkerCapacity],
          shapes: set[tuple[int, float | None]], live_since: datetime) -> None:
    """Write position, reason and expected start onto each team's first HEAD waiting jobs.

    Position is the order the planner would hand out slots if every job fitted: the same
    fair-share merge as `_assign`, continued on copies of the team loads. It is exact up to
    the first point where a team whose hidden (unread) jobs could come next runs out of read
    ones; the jobs after that get no position. Only changed rows are written."""
    sim = {t: replace(load) for t, load in loads.items()}
    window = {t: q.jobs[:HEAD] for t, q in queues.items() if q.jobs}
    position: dict[str, int] = {}

    def entry(t: str, i: int) -> tuple:
        job = window[t][i]
        return (*sim[t].key(slots_needed(job.gpus)), -job.priority, job.created_at, t, i)

    heap = [entry(t, 0) for t in window]
    heapq.heapify(heap)
    while heap:
        *_, t, i = heapq.heappop(heap)
        job = window[t][i]
        position[job.id] = len(position) + 1
        sim[t].charge(slots_needed(job.gpus))
        if i + 1 < len(window[t]):
            heapq.heappush(heap, entry(t, i + 1))
        elif queues[t].more or len(queues[t].jobs) > HEAD:
            break  # this team's next job is unread: later positions could be its

    can_run: dict[tuple, bool] = {}
    has_room: dict[tuple, bool] = {}
    earliest: dict[tuple, datetime | None] = {}
    finishes: dict[tuple, datetime] | None = None
    changes: list[dict] = []
    for team_id, jobs in window.items():
        for job in jobs:
            shape, pos, eta = _shape(job), position.get(job.id), None
            if shape not in can_run:
                can_run[shape] = any(job_fits(g, m, job) for g, m in shapes)
                has_room[shape] = any(w.fits(job) for w in free)  # free as left by this tick
            if not can_run[shape]:
                reason = f"no live worker in the pool can run {job.gpus} GPU(s)"
                if (need := gpu_memory_needed(job)) is not None:
                    planned = job.planned_gpu_memory_gb is not None and need == job.planned_gpu_memory_gb
                    reason += f" with >= {need:.1f} GB" + (" (the job's fit plan needs that per GPU)" if planned else "")
            elif loads[team_id].at_limit:
                reason = f"team is at its running limit ({loads[team_id].max_running} jobs)"
            elif not has_room[shape]:
                reason = "all fitting worker slots are busy"
                if shape not in earliest:
                    finishes = finishes if finishes is not None else _earliest_finish_by_shape(session, live_since)
                    earliest[shape] = min((f for (g, m), f in finishes.items() if job_fits(g, m, job)), default=None)
                eta = earliest[shape]
            elif pos == 1:
                reason = "waiting for the scheduler"
            elif pos is not None:
                reason = f"behind {pos - 1} job(s) in fair-share order"
            else:
                reason = f"behind at least {len(position)} job(s) in fair-share order"
            current = (job.queue_position, job.queue_reason, as_utc(job.estimated_start) if job.estimated_start else None)
            if current != (pos, reason, eta):
                changes.append({"id": job.id, "queue_position": pos, "queue_reason": reason, "estimated_start": eta})
    _write_queue_columns(session, changes)


def _write_queue_columns(session: Session, changes: list[dict]) -> None:
    """One executemany by primary key; ORM objects of those jobs in this session are expired
    so they read the new values."""
    if not changes:
        return
    session.execute(update(Job), changes)
    for change in changes:
        _expire(session, Job, change["id"])


def _expire(session: Session, model, pk: str) -> None:
    """Statements above bypass the ORM (one round trip, no per-object hooks); an object of
    that row already in this session reloads on its next read."""
    obj = session.identity_map.get(identity_key(model, pk))
    if obj is not None:
        session.expire(obj)


def _earliest_finish_by_shape(session: Session, live_since: datetime) -> dict[tuple, datetime]:
    """When the first running job is expected to end on live workers of each shape."""
    rows = session.execute(
        select(Worker.gpus, Worker.gpu_memory_gb, func.min(Job.estimated_finish))
        .join(Worker, Worker.id == Job.held_worker_id)
        .where(Job.held_worker_id.is_not(None), Job.status.in_([s.value for s in ACTIVE]), Job.estimated_finish.is_not(None),
               Worker.active.is_(True), Worker.last_heartbeat >= live_since)
        .group_by(Worker.gpus, Worker.gpu_memory_gb)
    )
    return {(g, m): as_utc(f) for g, m, f in rows}
