"""`bench/scheduler.py --simulate`: the planner at pool scale, without training processes.

A fresh PostgreSQL database gets `--workers` synthetic workers of `--slots` one-GPU slots,
all busy but one slot with jobs spread over `--teams` teams in proportion to their shares
(shares cycle 1, 1, 2, 3, 5), and `--queued` waiting jobs. Then, for `--seconds`:

- `--planners` threads run the production scheduling loop (worker/scheduler.py `start`:
  event-driven ticks, advisory try-lock, reconciler), as that many worker processes would;
  they share one LISTEN connection, as threads of one process do;
- what a tick sends is claimed by `--claimers` threads through the real `claim_job`, as a
  worker receiving the message would;
- running jobs finish at random (exponential, mean `--job-seconds`) through the real
  `finish`, which frees the slot and notifies the planner.

Printed: plan tick p50/p99 (ticks that held the lock), assignments/s, database time per
tick, dispatch latency (a slot freed by a commit -> the next job claimed on that worker),
each team's share of the run's dispatches against its target, and a GET of a queued job.
With `--reference-ticks N` it also times the former whole-table planner on the same rows.
"""

from __future__ import annotations

import heapq
import queue
import random
import secrets
import statistics
import threading
import time
from collections import defaultdict, deque
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from sqlalchemy import event, select, text
from sqlalchemy.orm import Session

from api.schemas import job_object
from core.config import Settings
from core.db import get_engine
from core.models import Job
from core.notify import PLAN, Listener
from core.services import runs
from core.services.planner import team_loads, typical_job_seconds
from core.services.scheduling import Tick
from core.spec import JobSpec
from tests.conftest import fresh_database
from worker import scheduler

SHARES = [1.0, 1.0, 2.0, 3.0, 5.0]
SPEC = JobSpec(model="org/m", training_file="file-x").model_dump_json()


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def seed(url: str, workers: int, slots: int, queued: int, teams: int, job_seconds: float, rng: random.Random) -> list[tuple[str, float]]:
    """Rows straight in SQL (generate_series): 100,000 jobs in seconds, not minutes. The
    maintained counts (held_*, used_slots) are written consistently with the rows."""
    shares = [(f"team-{t:03d}", SHARES[t % len(SHARES)]) for t in range(teams)]
    total = workers * slots - 1  # all busy but one slot
    # Running jobs per team in proportion to share (the pool starts at its fair split).
    weights = [s for _, s in shares]
    exact = [total * w / sum(weights) for w in weights]
    per_team = [int(x) for x in exact]
    for i in sorted(range(teams), key=lambda i: per_team[i] - exact[i])[: total - sum(per_team)]:
        per_team[i] += 1  # largest remainders first: as close to the shares as whole jobs get
    owner = [shares[i][0] for i, n in enumerate(per_team) for _ in range(n)]
    rng.shuffle(owner)
    engine = get_engine(url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO teams (id, name, share, created_at) VALUES (:id, :id, :share, now())"),
                     [{"id": t, "share": s} for t, s in shares])
        conn.execute(text("""
            INSERT INTO workers (id, hostname, slots, gpus, gpu_memory_gb, running_job_ids, active, started_at, last_heartbeat, used_slots)
            SELECT 'sim-w' || lpad(w::text, 5, '0'), 'sim', :slots, :slots, 80, '[]', true, now(), now(), 0
            FROM generate_series(1, :workers) w"""), {"slots": slots, "workers": workers})
        cols = ("id, team_id, model, training_file_id, spec, spec_hash, seed, status, priority, gpus, attempt, max_attempts, "
                "created_at, updated_at, held_slots")
        conn.execute(text(f"""
            INSERT INTO jobs ({cols}, worker_id, held_worker_id, started_at, lease_expires_at)
            SELECT 'sim-run-' || lpad(i::text, 7, '0'), o.team, 'm', 'f', CAST(:spec AS json), 'h', 0, 'running', 0, 1, 1, 3,
                   now() - interval '1 hour', now(), 1, w.id, w.id, now() - random() * :len * interval '1 second',
                   now() + interval '1 day'
            FROM unnest(CAST(:owners AS text[])) WITH ORDINALITY AS o(team, i)
            JOIN (SELECT id, row_number() OVER (ORDER BY id) AS rn FROM workers) w ON w.rn = (i - 1) / :slots + 1"""),
            {"owners": owner, "slots": slots, "len": job_seconds, "spec": SPEC})
        conn.execute(text("UPDATE workers SET used_slots = (SELECT count(*) FROM jobs WHERE held_worker_id = workers.id)"))
        conn.execute(text(f"""
            INSERT INTO jobs ({cols})
            SELECT 'sim-q-' || lpad(i::text, 7, '0'), 'team-' || lpad(((i - 1) % :teams)::text, 3, '0'), 'm', 'f', CAST(:spec AS json), 'h',
                   0, 'queued', (i % 10 = 0)::int, 1, 0, 3, now() - (:n - i) * interval '1 millisecond', now(), 0
            FROM generate_series(1, :n) i"""), {"teams": teams, "n": queued, "spec": SPEC})
        conn.execute(text("ANALYZE"))
        running = conn.execute(text("SELECT id FROM jobs WHERE status = 'running'")).scalars().all()
    # Remaining time of each running job: uniform within a job length.
    return [(jid, rng.random() * 2 * job_seconds) for jid in running]


class Broker:
    """Stands in for Celery's send_task: the message goes to the simulated worker side."""

    def __init__(self) -> None:
        self.messages: queue.Queue[tuple[str, str, float]] = queue.Queue()

    def send_task(self, _name, args, queue):  # noqa: A002 - Celery's signature
        self.messages.put((args[0], queue.rsplit(".", 1)[-1] if "." in queue else queue, time.monotonic()))


@contextmanager
def db_timer(engine):
    """Per-thread time spent inside the database driver."""
    local = threading.local()

    def before(conn, cursor, statement, params, context, executemany):
        context._t0 = time.perf_counter()

    def after(conn, cursor, statement, params, context, executemany):
        local.total = getattr(local, "total", 0.0) + time.perf_counter() - context._t0

    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "after_cursor_execute", after)
    try:
        yield local
    finally:
        event.remove(engine, "before_cursor_execute", before)
        event.remove(engine, "after_cursor_execute", after)


def reference_ticks(url: str, n: int) -> list[float]:
    from tests.scheduling import reference

    out = []
    with Session(get_engine(url)) as s:
        for _ in range(n):
            t = time.perf_counter()
            reference.plan(s, heartbeat_timeout=timedelta(hours=1))
            out.append(time.perf_counter() - t)
            s.rollback()
    return out


def simulate(args) -> None:
    rng = random.Random(args.seed)
    with fresh_database("simbench") as url:
        t = time.monotonic()
        ends = seed(url, args.workers, args.slots, args.queued, args.teams, args.job_seconds, rng)
        print(f"seeded {args.workers} workers x {args.slots} slots (all busy but one), {args.queued} queued jobs, "
              f"{args.teams} teams in {time.monotonic() - t:.1f}s", flush=True)
        if args.reference_ticks:
            ref = reference_ticks(url, args.reference_ticks)
            print(f"former whole-table planner, same rows: tick p50 {statistics.median(ref) * 1000:.0f} ms "
                  f"(n={len(ref)}, max {max(ref) * 1000:.0f} ms)", flush=True)
        # A GET of a queued job: one primary-key read and three stored columns.
        get_times = []
        with Session(get_engine(url)) as s:
            deep = s.scalars(select(Job.id).where(Job.status == "queued", Job.worker_id.is_(None)).order_by(Job.created_at.desc()).limit(200)).all()
            for jid in deep:
                t = time.perf_counter()
                job_object(s.get(Job, jid))
                get_times.append(time.perf_counter() - t)
                s.expunge_all()
        settings = Settings(database_url=url, queue="sim", schedule_interval_seconds=args.interval, secret_key=secrets.token_urlsafe(32),
                            worker_timeout_seconds=3600, dispatch_timeout_seconds=300)
        engine = get_engine(url)
        broker, stop = Broker(), threading.Event()
        ticks: list[tuple[float, float, int]] = []  # (seconds, db seconds, assignments) of ticks that planned
        skipped = [0]
        freed: dict[str, deque[float]] = defaultdict(deque)  # worker -> when its slots freed
        dispatch: list[float] = []
        to_send: list[float] = []  # slot freed -> the planner's tick sent the job (after its commit)
        to_claim: list[float] = []  # sent -> claimed by the simulated worker
        by_team: dict[str, int] = defaultdict(int)  # dispatches while every team still had a backlog
        claimed: dict[str, int] = defaultdict(int)
        backlog = {f"team-{t:03d}": len(range(t, args.queued, args.teams)) for t in range(args.teams)}
        backlogged_until = [None]
        heap: list[tuple[float, str, int]] = []
        lock = threading.Lock()
        start = time.monotonic()
        for jid, left in ends:
            heap.append((start + left, jid, 1))
        heapq.heapify(heap)
        freed[f"sim-w{args.workers:05d}"].append(start)  # the one free slot: the last worker, as seeded

        with db_timer(engine) as local:
            real_plan_tick = scheduler.plan_tick

            def timed_plan_tick(*a, **kw) -> Tick:
                local.total = 0.0
                t0 = time.perf_counter()
                result = real_plan_tick(*a, **kw)
                if result.planned:
                    ticks.append((time.perf_counter() - t0, local.total, len(result.assignments)))
                else:
                    skipped[0] += 1
                return result

            def claimer() -> None:
                with Session(engine) as s:
                    while not stop.is_set():
                        try:
                            job_id, worker_id, sent = broker.messages.get(timeout=0.2)
                        except queue.Empty:
                            continue
                        claim = runs.claim_job(s, job_id, worker_id, lease_seconds=3600)
                        s.commit()
                        now = time.monotonic()
                        if claim is None:
                            continue
                        with lock:
                            if freed[worker_id]:
                                was_freed = freed[worker_id].popleft()
                                dispatch.append(now - was_freed)
                                to_send.append(sent - was_freed)
                                to_claim.append(now - sent)
                            claimed[claim.team_id] += 1
                            if backlogged_until[0] is None:
                                by_team[claim.team_id] += 1
                                if claimed[claim.team_id] >= backlog[claim.team_id]:
                                    backlogged_until[0] = now - t0
                            heapq.heappush(heap, (now + rng.expovariate(1 / args.job_seconds), job_id, claim.attempt))

            def finisher() -> None:
                with Session(engine) as s:
                    while not stop.is_set():
                        with lock:
                            due = heap[0] if heap and heap[0][0] <= time.monotonic() else None
                            if due:
                                heapq.heappop(heap)
                        if due is None:
                            time.sleep(0.005)
                            continue
                        _, job_id, attempt = due
                        worker_id = s.get(Job, job_id).worker_id
                        runs.finish(s, job_id, attempt, "succeeded")
                        with lock:  # before the commit: no claim of the freed slot can precede it
                            freed[worker_id].append(time.monotonic())
                        s.commit()
                        s.expunge_all()

            real_run_tick = scheduler.run_tick
            whole: list[float] = []  # a whole pass: reconcile when due, plan, commit, send

            def timed_run_tick(*a, **kw) -> Tick:
                t0 = time.perf_counter()
                result = real_run_tick(*a, **kw)
                if result.planned:
                    whole.append(time.perf_counter() - t0)
                return result

            scheduler.plan_tick = timed_plan_tick
            scheduler.run_tick = timed_run_tick
            listener = Listener(url, channels=(PLAN,)).start()
            listener.listening.wait(10)
            t0 = time.monotonic()
            threads = [threading.Thread(target=claimer, daemon=True) for _ in range(args.claimers)]
            threads.append(threading.Thread(target=finisher, daemon=True))
            for th in threads:
                th.start()
            for _ in range(args.planners):
                scheduler.start(broker, settings, stop, listener)
            time.sleep(args.seconds)
            elapsed = time.monotonic() - t0
            stop.set()
            for th in threads:
                th.join(5)
            listener.stop()
            scheduler.plan_tick = real_plan_tick
            scheduler.run_tick = real_run_tick
            time.sleep(1.0)

        # Fair share as the planner measures it: each team's slot-time over the window.
        with Session(engine) as s:
            now = datetime.now(UTC)
            usage = {t: load.usage for t, load in team_loads(s, now, typical_job_seconds(s, now)).items()}
        engine.dispose()

    secs = [t for t, _, _ in ticks]
    dbs = [d for _, d, _ in ticks]
    total = sum(n for _, _, n in ticks)
    print(f"ran {elapsed:.0f}s with {args.planners} planner loops, {args.claimers} claimers; "
          f"ticks planned {len(ticks)}, skipped (lock held elsewhere) {skipped[0]}")
    print(f"plan tick: p50 {pct(secs, 0.5) * 1000:.1f} ms, p99 {pct(secs, 0.99) * 1000:.1f} ms, max {max(secs, default=0) * 1000:.1f} ms")
    print(f"whole pass (reconcile when due + plan + commit + send): p50 {pct(whole, 0.5) * 1000:.1f} ms, "
          f"p99 {pct(whole, 0.99) * 1000:.1f} ms")
    print(f"database time per tick: p50 {pct(dbs, 0.5) * 1000:.1f} ms, p99 {pct(dbs, 0.99) * 1000:.1f} ms")
    print(f"assignments: {total} ({total / elapsed:.1f}/s; {len(dispatch)} after a slot freed)")
    print(f"dispatch latency (slot freed -> next job claimed on it): p50 {pct(dispatch, 0.5) * 1000:.0f} ms, "
          f"p99 {pct(dispatch, 0.99) * 1000:.0f} ms, max {max(dispatch, default=float('nan')) * 1000:.0f} ms; of which "
          f"freed -> sent p50 {pct(to_send, 0.5) * 1000:.0f} / p99 {pct(to_send, 0.99) * 1000:.0f} ms, "
          f"sent -> claimed p50 {pct(to_claim, 0.5) * 1000:.0f} / p99 {pct(to_claim, 0.99) * 1000:.0f} ms")
    print(f"GET of a queued job (row + stored queue columns): p50 {pct(get_times, 0.5) * 1000:.2f} ms, "
          f"p99 {pct(get_times, 0.99) * 1000:.2f} ms")
    shares = {f"team-{t:03d}": SHARES[t % len(SHARES)] for t in range(args.teams)}
    n = sum(by_team.values())
    errors = []
    lines = []
    for team, share in shares.items():
        target = share / sum(shares.values())
        got = by_team.get(team, 0) / n if n else 0.0
        errors.append((got - target) / target)
        lines.append(f"  {team} share {share:g}: target {target:6.2%} got {got:6.2%} ({by_team.get(team, 0)} jobs, error {errors[-1]:+.1%})")
    until = f"the first {backlogged_until[0]:.0f}s (then a team's backlog ran out)" if backlogged_until[0] else "the whole run"
    print(f"share of dispatches per team vs target over {until}, {n} dispatches (all jobs one slot, same length "
          f"distribution): max |error| {max(map(abs, errors), default=0):.1%} of target, mean |error| "
          f"{statistics.fmean(map(abs, errors)) if errors else 0:.1%}; one job of the smallest share is "
          f"{1 / (n * min(shares.values()) / sum(shares.values())) if n else float('nan'):.1%} of its target")
    total_usage = sum(usage.values())
    usage_err = [(usage.get(t, 0.0) / total_usage - sh / sum(shares.values())) / (sh / sum(shares.values())) for t, sh in shares.items()]
    print(f"slot-time share per team after the run (the planner's 24 h measure: finished + running) vs target: "
          f"max |error| {max(map(abs, usage_err)):.1%} of target, mean |error| {statistics.fmean(map(abs, usage_err)):.1%}")
    for line in lines if args.teams <= 10 or args.verbose else lines[:5] + [f"  ... ({args.teams - 5} more; --verbose lists all)"]:
        print(line)
