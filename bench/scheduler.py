"""Scheduler benchmark, two modes.

`--simulate` (bench/scheduler_sim.py): the planner at pool scale — thousands of synthetic
workers and a hundred thousand queued jobs in PostgreSQL, the production scheduling loop,
no training processes:

    python bench/scheduler.py --simulate --workers 1000 --slots 8 --queued 100000 --teams 50
    python bench/scheduler.py --simulate --workers 10 --slots 8 --queued 1000 --teams 50

Without it: a pool of real worker processes draining a backlog of tiny real training jobs
from teams with different shares.

Starts `--workers` real `celery worker` processes (slots from `--slots`, cycled) on a
fresh PostgreSQL database, a Redis db index of its own and a queue of its own, queues
`--jobs` one-step jobs on the tiny model spread evenly over 5 teams with shares
1, 1, 2, 3, 5, lets the pool run for `--seconds`, stops it, and reads from SQL:

  dispatch latency   a slot becoming free (its job's finished_at, or the worker's start)
                     -> the next job claimed on that worker (started_at): scheduler tick,
                     broker, claim. Training start-up is NOT in it; it is in the job time.
  slot utilisation   busy slot-seconds / available slot-seconds over the window.
  team share         each team's busy slot-seconds / all busy slot-seconds, vs share/sum.

    python bench/scheduler.py [--seconds 150] [--workers 3] [--slots 2,1,2] [--jobs 1000]

Prints figures; asserts nothing. Needs PostgreSQL on 127.0.0.1:5432 and Redis on 6379.
On a small CPU box most of a job's time is the training process starting (Python,
torch, the model): the figures say how well slots are kept busy and shared, not how fast
training is.
"""

from __future__ import annotations

import argparse
import io
import secrets
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import redis
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.config import Settings
from core.jobrequest import JobCreateRequest
from core.models import Job, JobEvent, Worker
from core.services.auth import create_team
from core.services.files import upload_file
from core.services.jobs import create_job
from core.storage import get_store
from tests.conftest import fresh_database
from tests.jobdata import TEMPLATE, hyperparameters, jsonl, news_rows, tiny_model
from tests.stacks import celery_worker

SHARES = [1.0, 1.0, 2.0, 3.0, 5.0]


def quiet_redis_db() -> str:
    """The emptiest non-zero db index; our queue names are unique, so sharing it is safe."""
    sizes = {i: redis.Redis.from_url(f"redis://127.0.0.1:6379/{i}").dbsize() for i in range(1, 16)}
    return f"redis://127.0.0.1:6379/{min(sizes, key=sizes.get)}"


def seed(env: dict[str, str], model: Path, n_jobs: int) -> list[str]:
    settings = Settings(**{k.removeprefix("TUNEFORGE_").lower(): v for k, v in env.items() if k.startswith("TUNEFORGE_")})
    engine = create_engine(env["TUNEFORGE_DATABASE_URL"])
    team_ids = []
    with Session(engine) as s:
        for i, share in enumerate(SHARES):
            team = create_team(s, f"bench-{i}-share-{share:g}", share=share)
            f = upload_file(s, settings, get_store(settings), team.id, filename="n.jsonl", purpose="fine-tune",
                            stream=io.BytesIO(jsonl(news_rows(4, chars=120))))
            team_ids.append((team.id, f.id))
        s.commit()
        # Round-robin creation: no team is older than another, so age cannot explain the shares.
        for n in range(n_jobs):
            team_id, file_id = team_ids[n % len(team_ids)]
            create_job(s, settings, team_id, JobCreateRequest(
                model=str(model), training_file=file_id, template=TEMPLATE,
                hyperparameters={**hyperparameters(1, every=1000), "max_seq_length": 128, "batch_size": 1},
                evaluation={"generation_samples": 0}))
            if n % 100 == 99:
                s.commit()
        s.commit()
    engine.dispose()
    return [t for t, _ in team_ids]


def aware(dt: datetime | None) -> datetime | None:
    return dt.replace(tzinfo=UTC) if dt is not None and dt.tzinfo is None else dt


def report(url: str, team_ids: list[str], t0: datetime, t1: datetime) -> None:
    engine = create_engine(url)
    with Session(engine) as s:
        workers = {w.id: w for w in s.scalars(select(Worker))}
        jobs = list(s.scalars(select(Job).where(Job.started_at.is_not(None)).order_by(Job.started_at)))
        # The row forgets its worker once finished; the "Attempt n started" event keeps it.
        claimed_by = dict(s.execute(select(JobEvent.job_id, JobEvent.data["worker_id"].as_string()).where(
            JobEvent.type == "status", JobEvent.message.like("Attempt % started on worker %")).order_by(JobEvent.id)).all())
    engine.dispose()
    window = (t1 - t0).total_seconds()
    total_slots = sum(w.slots for w in workers.values())

    # Dispatch latency: each start on a worker takes the earliest slot freed before it.
    free: dict[str, list[datetime]] = {w.id: [aware(w.started_at)] * w.slots for w in workers.values()}
    latencies = []
    for job in jobs:
        start, wid = aware(job.started_at), claimed_by.get(job.id)
        slots = sorted(free.get(wid, []))
        ready = [t for t in slots if t <= start]
        if ready:
            slots.remove(ready[0])
            latencies.append((start - ready[0]).total_seconds())
        if job.finished_at is not None:
            slots.append(aware(job.finished_at))
        free[wid] = slots

    busy = defaultdict(float)
    durations = []
    for job in jobs:
        a, b = max(aware(job.started_at), t0), min(aware(job.finished_at) or t1, t1)
        busy[job.team_id] += max((b - a).total_seconds(), 0.0)
        if job.finished_at is not None:
            durations.append((aware(job.finished_at) - aware(job.started_at)).total_seconds())
    done = sum(1 for j in jobs if j.status == "succeeded")
    failed = sum(1 for j in jobs if j.status == "failed")
    all_busy = sum(busy.values())

    def pct(xs, q):
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")

    print(f"window {window:.0f}s, {len(workers)} workers, {total_slots} slots; jobs started {len(jobs)}, "
          f"succeeded {done}, failed {failed}")
    if durations:
        print(f"job wall time (claim -> finished, mostly process start-up): p50 {statistics.median(durations):.1f}s "
              f"p99 {pct(durations, 0.99):.1f}s")
    print(f"dispatch latency (slot free -> next job running), n={len(latencies)}: "
          f"p50 {pct(latencies, 0.5) * 1000:.0f} ms, p99 {pct(latencies, 0.99) * 1000:.0f} ms, "
          f"max {max(latencies, default=float('nan')) * 1000:.0f} ms")
    print(f"slot utilisation: {all_busy / (total_slots * window):.1%} "
          f"({all_busy:.0f} busy of {total_slots * window:.0f} slot-seconds)")
    print("team share of slot-time (target = share / sum of shares; every team has a backlog throughout):")
    for tid, share in zip(team_ids, SHARES):
        got = busy[tid] / all_busy if all_busy else 0.0
        n = sum(1 for j in jobs if j.team_id == tid)
        print(f"  share {share:>3g}: target {share / sum(SHARES):6.1%}  got {got:6.1%}  ({n} jobs started)")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=150)
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--slots", default="2,1,2")
    p.add_argument("--jobs", type=int, default=1000)
    p.add_argument("--schedule-interval", type=float, default=1.0, help="TUNEFORGE_SCHEDULE_INTERVAL_SECONDS")
    sim = p.add_argument_group("--simulate (synthetic pool, no training)")
    sim.add_argument("--simulate", action="store_true")
    sim.add_argument("--queued", type=int, default=1000)
    sim.add_argument("--teams", type=int, default=50)
    sim.add_argument("--job-seconds", type=float, default=None, help="mean job length (default: slots / 40 per second of finishes)")
    sim.add_argument("--planners", type=int, default=None, help="scheduling loops, as worker processes (default: min(workers, 8))")
    sim.add_argument("--claimers", type=int, default=4)
    sim.add_argument("--interval", type=float, default=1.0)
    sim.add_argument("--reference-ticks", type=int, default=0, help="also time the former planner this many times")
    sim.add_argument("--seed", type=int, default=1)
    sim.add_argument("--verbose", action="store_true")
    args = p.parse_args()
    if args.simulate:
        from bench.scheduler_sim import simulate

        args.slots = int(args.slots) if args.slots.isdigit() else 8
        args.seconds = args.seconds if "--seconds" in sys.argv else 60.0
        args.planners = args.planners or min(args.workers, 8)
        # Finishes at ~40/s whatever the pool size: what two shared cores can drive.
        args.job_seconds = args.job_seconds or args.workers * args.slots / 40
        simulate(args)
        return
    slots = [int(x) for x in args.slots.split(",")]

    with tempfile.TemporaryDirectory(prefix="tuneforge-bench-") as tmp, fresh_database("bench") as url:
        root = Path(tmp)
        broker = quiet_redis_db()
        model = tiny_model(root / "models")
        env = {
            "TUNEFORGE_DATABASE_URL": url,
            "TUNEFORGE_BROKER_URL": broker,
            "TUNEFORGE_QUEUE": f"tuneforge-bench-{secrets.token_hex(4)}",
            "TUNEFORGE_ARTIFACTS_URL": f"file://{root / 'artifacts'}",
            "TUNEFORGE_WORK_DIR": str(root / "work"),
            "TUNEFORGE_MODEL_ROOTS": str(root / "models"),
            "TUNEFORGE_SECRET_KEY": secrets.token_urlsafe(32),
            "TUNEFORGE_HOME": str(root),
            "TUNEFORGE_SCHEDULE_INTERVAL_SECONDS": str(args.schedule_interval),
            "TUNEFORGE_HEARTBEAT_SECONDS": "2",
            "TUNEFORGE_LEASE_SECONDS": "60",
        }
        t = time.monotonic()
        team_ids = seed(env, model, args.jobs)
        print(f"seeded {args.jobs} jobs from {len(SHARES)} teams in {time.monotonic() - t:.1f}s")
        try:
            with ExitStack() as pool:
                for i in range(args.workers):
                    pool.enter_context(celery_worker({**env, "TUNEFORGE_WORKER_SLOTS": str(slots[i % len(slots)])},
                                                     root / f"worker-{i}.log"))
                t0 = datetime.now(UTC)
                print(f"{args.workers} workers up (slots {args.slots}, schedule interval {args.schedule_interval:g}s); "
                      f"running {args.seconds:.0f}s ...", flush=True)
                time.sleep(args.seconds)
                t1 = datetime.now(UTC)
                report(url, team_ids, t0, t1)  # before the workers stop and hand their jobs back
        finally:  # our queues only: the db index may be shared
            r = redis.Redis.from_url(broker)
            for key in r.scan_iter(f"{env['TUNEFORGE_QUEUE']}*"):
                r.delete(key)


if __name__ == "__main__":
    main()
