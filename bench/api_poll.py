"""Poll-path benchmark: what clients and dashboards feel when they poll a busy service.

Seeds a fresh PostgreSQL database with 10,000 jobs (5 teams) and 1,000,000 metric points
(100 jobs x 10,000 steps), starts the real API server (uvicorn, one process, as
`tuneforge api` runs it), then drives concurrent clients against `jobs.retrieve`,
`jobs.list` and `/metrics?max_points=` on loopback -- each also as a conditional poll
(`If-None-Match` with the tag of the previous answer: a 304) -- next to a trivial endpoint
(/healthz) on the same server in the same run. The ratio to the trivial endpoint is the
figure: it says how much of a poll is our work and how much is HTTP + the framework.
The table is printed for each `--concurrency` (default 16 and 64).

Then the SSE fan-out: N streams (`--streams`) open on one running job; retrieve latency at
16 clients with none open and while they are open; and the time from the commit of one
runner event until every stream has received it.

    python bench/api_poll.py [--seconds 8] [--concurrency 16 64] [--streams 500]

Prints figures; asserts nothing. Needs PostgreSQL on 127.0.0.1:5432 (trust auth).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import secrets
import statistics
import sys
import time
from pathlib import Path

import httpx
import psutil
import psycopg
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.models import Job, new_id, utcnow  # noqa: E402
from core.services import runs  # noqa: E402
from core.services.auth import create_api_key, create_team  # noqa: E402
from core.spec import JobSpec  # noqa: E402
from tests.conftest import fresh_database, free_port, run_api  # noqa: E402

N_TEAMS, N_JOBS, METRIC_JOBS, STEPS = 5, 10_000, 100, 10_000


def seed(url: str) -> tuple[str, str, str]:
    """Returns (api key, a job id with a 10,000-step series, team id) of the polling team."""

    engine = create_engine(url)
    spec = JobSpec(model="org/model", training_file="file-x").model_dump(mode="json")
    with Session(engine) as s:
        teams = [create_team(s, f"team-{i}") for i in range(N_TEAMS)]
        _row, key = create_api_key(s, teams[0].id)
        s.commit()
        team_ids = [t.id for t in teams]
        statuses = ["succeeded", "failed", "cancelled", "running", "queued"]
        jobs = [
            dict(id=new_id("ftjob"), team_id=team_ids[i % N_TEAMS], model="org/model", training_file_id="file-x",
                 spec=spec, spec_hash="h", status=statuses[i % 5], seed=42, priority=0, gpus=1, attempt=1,
                 max_attempts=3, created_at=utcnow(), updated_at=utcnow(),
                 latest_metrics={"loss": 1.0, "step": 100})
            for i in range(N_JOBS)
        ]
        s.execute(Job.__table__.insert(), jobs)
        s.commit()
        team0 = team_ids[0]
    metric_jobs = [j["id"] for j in jobs if j["team_id"] == team0][:METRIC_JOBS]
    engine.dispose()
    copy_series(url, [(jid, STEPS) for jid in metric_jobs])
    return key, metric_jobs[0], team0


def copy_series(url: str, series: list[tuple[str, int]]) -> None:
    """Metric points 1..steps for each (job id, steps), with their positions, by COPY."""
    pg = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(pg) as conn, conn.cursor() as cur:
        with cur.copy("COPY metrics (job_id, step, seq, attempt, values, created_at) FROM STDIN") as copy:
            now = utcnow().isoformat()
            for jid, steps in series:
                buf = io.StringIO()
                for step in range(1, steps + 1):
                    v = json.dumps({"loss": 2.0 / step**0.1, "learning_rate": 2e-4, "grad_norm": 1.0, "tokens_per_second": 900.0})
                    buf.write(f"{jid}\t{step}\t{step - 1}\t1\t{v}\t{now}\n")
                copy.write(buf.getvalue())
        conn.commit()


def series_scaling(base: str, key: str, url: str, team_id: str, lengths=(1_000, 10_000, 100_000)) -> None:
    """/metrics?max_points=200 latency, one client, by series length: flat means O(max_points)."""
    engine = create_engine(url)
    spec = JobSpec(model="org/model", training_file="file-x").model_dump(mode="json")
    with Session(engine) as s:
        ids = []
        for _ in lengths:
            job = Job(team_id=team_id, model="org/model", training_file_id="file-x", spec=spec, spec_hash="h", status="succeeded")
            s.add(job)
            s.flush()
            ids.append(job.id)
        s.commit()
    engine.dispose()
    copy_series(url, list(zip(ids, lengths)))
    print("\n/metrics?max_points=200, one client, 60 requests each: median ms by series length")
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}) as client:
        for jid, n in zip(ids, lengths):
            lat = []
            for _ in range(60):
                t0 = time.perf_counter()
                client.get(f"/v1/fine_tuning/jobs/{jid}/metrics", params={"max_points": 200}).raise_for_status()
                lat.append(time.perf_counter() - t0)
            print(f"  {n:>8,} steps: {statistics.median(lat) * 1000:6.1f} ms")


async def drive(base: str, path: str, key: str, seconds: float, concurrency: int, conditional: bool = False) -> tuple[int, list[float]]:
    """Each client GETs `path` in a loop; `conditional`: with If-None-Match of the previous
    answer's ETag, as a dashboard polls (every answer after the first is then a 304)."""
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"}, limits=limits, timeout=30) as client:

        async def loop() -> None:
            nonlocal errors
            tag = None
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                r = await client.get(path, headers={"If-None-Match": tag} if tag else None)
                latencies.append(time.perf_counter() - t0)
                errors += r.status_code not in (200, 304)
                if conditional:
                    tag = r.headers.get("etag")

        await asyncio.gather(*(loop() for _ in range(concurrency)))
    return errors, latencies


def server_cpu() -> float:
    """CPU seconds used so far by the API server (our child process): per request, a figure
    that a machine shared with other work does not distort the way req/s is distorted."""
    return sum(sum(p.cpu_times()[:2]) for p in psutil.Process().children(recursive=True))


def poll_table(base: str, key: str, job_id: str, seconds: float, concurrency: int) -> None:
    retrieve, listing = f"/v1/fine_tuning/jobs/{job_id}", "/v1/fine_tuning/jobs?limit=20"
    metrics = f"/v1/fine_tuning/jobs/{job_id}/metrics?max_points=200"
    cases = [
        ("trivial  GET /healthz", "/healthz", False),
        ("retrieve GET /v1/fine_tuning/jobs/{id}", retrieve, False),
        ("retrieve 304 (If-None-Match)", retrieve, True),
        ("list     GET /v1/fine_tuning/jobs?limit=20", listing, False),
        ("list     304 (If-None-Match)", listing, True),
        ("metrics  GET …/{id}/metrics?max_points=200", metrics, False),
        ("metrics  304 (If-None-Match)", metrics, True),
    ]
    base_rps = None
    print(f"\nconcurrency {concurrency}, {seconds:.0f}s per endpoint, one uvicorn process, loopback")
    print(f"{'endpoint':46} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'rps vs trivial':>15} {'server CPU ms/req':>18}")
    for label, path, cond in cases:
        cpu0 = server_cpu()
        errors, lat = asyncio.run(drive(base, path, key, seconds, concurrency, cond))
        cpu_ms = (server_cpu() - cpu0) * 1000 / len(lat)
        rps = len(lat) / seconds
        base_rps = base_rps or rps
        q = statistics.quantiles(lat, n=100)
        print(f"{label:46} {rps:8.1f} {q[49] * 1000:8.1f} {q[98] * 1000:8.1f} {errors:7d} {rps / base_rps:15.2f} {cpu_ms:18.2f}")


def running_job(url: str, team_id: str) -> str:
    """A job claimed by a (pretend) worker, for the streams to follow."""
    engine = create_engine(url)
    spec = JobSpec(model="org/model", training_file="file-x").model_dump(mode="json")
    with Session(engine) as s:
        job = Job(team_id=team_id, model="org/model", training_file_id="file-x", spec=spec, spec_hash="h", status="queued")
        s.add(job)
        s.commit()
        runs.claim_job(s, job.id, "bench-worker:1", 600)
        s.commit()
        job_id = job.id
    engine.dispose()
    return job_id


def write_event(url: str, job_id: str, message: str) -> float:
    """Commit one runner event; returns the perf_counter time of the commit."""
    engine = create_engine(url)
    with Session(engine) as s:
        attempt = s.get(Job, job_id).attempt
        runs.record_event(s, job_id, attempt, "info", message)
        s.commit()
        committed = time.perf_counter()
    engine.dispose()
    return committed


async def fan_out(base: str, key: str, url: str, job_id: str, n: int, probe_path: str, seconds: float) -> None:
    """Open n streams, measure a plain GET with them open, then one event's trip to all n."""
    ready, heard = asyncio.Event(), asyncio.Event()
    opened: set[int] = set()
    got_at: dict[int, float] = {}
    limits = httpx.Limits(max_connections=n + 8)
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"}, limits=limits, timeout=120) as client:

        async def follow(i: int) -> None:
            async with client.stream("GET", f"/v1/fine_tuning/jobs/{job_id}/stream") as r:
                async for line in r.aiter_lines():
                    if line.startswith("event: status") and i not in opened:
                        opened.add(i)
                        if len(opened) == n:
                            ready.set()
                    elif line.startswith("data:") and "bench fan-out" in line:
                        got_at[i] = time.perf_counter()
                        if len(got_at) == n:
                            heard.set()
                        return

        t0 = time.perf_counter()
        tasks = [asyncio.create_task(follow(i)) for i in range(n)]
        try:
            await asyncio.wait_for(ready.wait(), 300)
            print(f"{n} streams open in {time.perf_counter() - t0:.1f}s")
            errors, lat = await drive(base, probe_path, key, seconds, 16)
            q = statistics.quantiles(lat, n=100)
            print(f"retrieve at 16 clients, {n} streams open: {len(lat) / seconds:8.1f} req/s  p50 {q[49] * 1000:.1f} ms  p99 {q[98] * 1000:.1f} ms  errors {errors}")
            committed = await asyncio.to_thread(write_event, url, job_id, "bench fan-out")
            await asyncio.wait_for(heard.wait(), 60)
            arrivals = sorted(t - committed for t in got_at.values())
            print(f"one event reached all {n} streams in {arrivals[-1] * 1000:.0f} ms after its commit (median stream {arrivals[len(arrivals) // 2] * 1000:.0f} ms)")
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def main() -> None:
    global N_JOBS, STEPS, METRIC_JOBS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--streams", type=int, default=500, help="SSE streams for the fan-out figure (0: skip)")
    ap.add_argument("--jobs", type=int, default=N_JOBS)
    ap.add_argument("--steps", type=int, default=STEPS, help="metric steps per series")
    ap.add_argument("--metric-jobs", type=int, default=METRIC_JOBS)
    args = ap.parse_args()
    N_JOBS, STEPS, METRIC_JOBS = args.jobs, args.steps, args.metric_jobs
    with fresh_database("bench") as url:
        t0 = time.perf_counter()
        key, job_id, team = seed(url)
        print(f"seeded {N_JOBS:,} jobs and {METRIC_JOBS * STEPS:,} metric points in {time.perf_counter() - t0:.1f}s")
        port = free_port()
        env = {
            "TUNEFORGE_DATABASE_URL": url,
            "TUNEFORGE_BROKER_URL": "redis://127.0.0.1:6379/15",
            "TUNEFORGE_SECRET_KEY": secrets.token_urlsafe(32),
            "TUNEFORGE_PUBLIC_URL": f"http://127.0.0.1:{port}",
        }
        with run_api(env, port) as base:
            asyncio.run(drive(base, "/healthz", key, 1.0, 4))  # warm up connections and imports
            for concurrency in args.concurrency:
                poll_table(base, key, job_id, args.seconds, concurrency)
            series_scaling(base, key, url, team)
            if args.streams:
                print(f"\nSSE fan-out: {args.streams} streams on one running job, one uvicorn process, loopback")
                probe = f"/v1/fine_tuning/jobs/{job_id}"
                errors, lat = asyncio.run(drive(base, probe, key, args.seconds, 16))
                q = statistics.quantiles(lat, n=100)
                print(f"retrieve at 16 clients, no streams open: {len(lat) / args.seconds:8.1f} req/s  p50 {q[49] * 1000:.1f} ms  p99 {q[98] * 1000:.1f} ms  errors {errors}")
                asyncio.run(fan_out(base, key, url, running_job(url, team), args.streams, probe, args.seconds))


if __name__ == "__main__":
    main()
