"""The worker pool as one team may see it: workers, each team's share against the slot-time
it used, and the waiting queue in dispatch order.

Read from what the planner maintains (core/services/planner.py): the workers' `used_slots`,
the fair-share loads it ranks by (`team_loads`), and the queue positions it writes on the
waiting jobs each tick, so the page shows the order the scheduler will actually follow and
costs no ranking of its own. Scoped like every other read: the caller's jobs appear with
ids, model and suffix; any other team's jobs only as counts (a run of N queued jobs, N
running on a worker), and other teams only as anonymous labels — never ids or names.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Row, select
from sqlalchemy.orm import Session

from core.models import Job, Team, Worker, as_utc, utcnow
from core.services import planner
from core.states import ACTIVE


@dataclass
class PoolWorker:
    id: str
    hostname: str
    gpus: int
    gpu_name: str | None
    gpu_memory_gb: float | None
    slots: int
    used_slots: int
    my_running_job_ids: list[str]
    other_running_jobs: int
    last_heartbeat: datetime
    stale: bool


@dataclass
class TeamShare:
    label: str  # the caller's team name; "other team 1", ... for the rest
    mine: bool
    share_target: float  # the team's weight over all weights, 0..1
    used: float  # its slot-seconds over the usage window, over everyone's, 0..1
    slot_seconds: float
    running_jobs: int
    waiting_jobs: int


@dataclass
class QueueEntry:
    """Either one of the caller's jobs, or `others` consecutive jobs of other teams."""

    position: int  # 1-based dispatch position of the entry's first job
    job_id: str | None = None
    model: str | None = None
    suffix: str | None = None
    priority: int | None = None
    created_at: datetime | None = None
    others: int = 0


@dataclass
class PoolView:
    workers: list[PoolWorker] = field(default_factory=list)
    teams: list[TeamShare] = field(default_factory=list)
    queue: list[QueueEntry] = field(default_factory=list)
    waiting_total: int = 0
    window_hours: float = planner.USAGE_WINDOW.total_seconds() / 3600


#: The typical job length behind the shares, refreshed at most once a minute per process as
#: the planner does (it is a sort over a day of finished jobs).
_PLAN_CACHE = planner.PlanCache()


def dispatch_order(session: Session) -> list[Row]:
    """Waiting jobs (the columns the view shows) in the order the planner ranked them at its
    last tick (the positions it stored), then the ones it has not ranked yet (beyond each
    team's head of line, or newer than the last tick) by priority and age."""
    waiting = select(Job.id, Job.team_id, Job.model, Job.suffix, Job.priority, Job.created_at).where(
        Job.status == "queued", Job.worker_id.is_(None)
    )
    return list(session.execute(waiting.order_by(Job.queue_position.is_(None), Job.queue_position, Job.priority.desc(), Job.created_at, Job.id)))


def pool_view(session: Session, team_id: str, heartbeat_timeout: timedelta, now: datetime | None = None) -> PoolView:
    now = now or utcnow()
    view = PoolView()
    live_since = now - heartbeat_timeout
    running: dict[str, list[Row]] = defaultdict(list)
    for r in session.execute(
        select(Job.id, Job.team_id, Job.worker_id).where(Job.worker_id.is_not(None), Job.status.in_([s.value for s in ACTIVE]))
    ):
        running[r.worker_id].append(r)
    for w in session.scalars(select(Worker).where(Worker.active.is_(True)).order_by(Worker.hostname, Worker.id)):
        live = as_utc(w.last_heartbeat) >= live_since  # retired (inactive) workers are history, not the pool
        on_it = running.get(w.id, [])
        view.workers.append(PoolWorker(
            id=w.id, hostname=w.hostname, gpus=w.gpus, gpu_name=w.gpu_name, gpu_memory_gb=w.gpu_memory_gb, slots=w.slots,
            used_slots=w.used_slots if live else 0,
            my_running_job_ids=[r.id for r in on_it if r.team_id == team_id],
            other_running_jobs=sum(1 for r in on_it if r.team_id != team_id),
            last_heartbeat=as_utc(w.last_heartbeat), stale=not live,
        ))

    waiting = dispatch_order(session)
    loads = planner.team_loads(session, now, _PLAN_CACHE.typical_job_seconds(session, now))
    view.waiting_total = len(waiting)
    for i, job in enumerate(waiting, start=1):
        if job.team_id == team_id:
            view.queue.append(QueueEntry(i, job.id, job.model, job.suffix, job.priority, as_utc(job.created_at)))
        elif view.queue and view.queue[-1].job_id is None:
            view.queue[-1].others += 1
        else:
            view.queue.append(QueueEntry(i, others=1))

    teams = {t.id: t for t in session.scalars(select(Team).order_by(Team.created_at, Team.id)).all()}
    waiting_by_team: dict[str, int] = {}
    for job in waiting:
        waiting_by_team[job.team_id] = waiting_by_team.get(job.team_id, 0) + 1
    # Teams that used the pool in the window or wait for it (always the caller's own).
    shown = [t for t in teams if t == team_id or loads[t].usage > 0 or waiting_by_team.get(t)]
    total_share = sum(loads[t].share for t in shown) or 1.0
    total_usage = sum(loads[t].usage for t in shown) or 1.0
    n = 0
    for t in shown:
        mine = t == team_id
        if not mine:
            n += 1
        view.teams.append(TeamShare(
            label=teams[t].name if mine else f"other team {n}", mine=mine,
            share_target=loads[t].share / total_share, used=loads[t].usage / total_usage,
            slot_seconds=round(loads[t].usage, 1), running_jobs=loads[t].running_jobs, waiting_jobs=waiting_by_team.get(t, 0),
        ))
    return view
