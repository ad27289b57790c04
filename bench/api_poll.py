"""Poll-path benchmark: what clients and dashboards feel when they poll a busy service.

Seeds a fresh PostgreSQL database with 10,000 jobs (5 teams) and 1,000,000 metric points
(100 jobs x 10,000 steps), starts the real API server (uvicorn, one process, as
`tuneforge api` runs it), then drives concurrent clients against `jobs.retrieve`,
`jobs.list` and `/metrics?max_points=` on loopback, next to a trivial endpoint (/healthz)
on the same server in the same run. The ratio to the trivial endpoint is the figure:
it says how much of a poll is our work and how much is HTTP + the framework.

    python bench/api_poll.py [--seconds 8] [--concurrency 16]

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
import psycopg
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.models import Job, new_id, utcnow  # noqa: E402
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
    pg = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(pg) as conn, conn.cursor() as cur:
        with cur.copy("COPY metrics (job_id, step, attempt, values, created_at) FROM STDIN") as copy:
            now = utcnow().isoformat()
            for jid in metric_jobs:
                buf = io.StringIO()
                for step in range(1, STEPS + 1):
                    v = json.dumps({"loss": 2.0 / step**0.1, "learning_rate": 2e-4, "grad_norm": 1.0, "tokens_per_second": 900.0})
                    buf.write(f"{jid}\t{step}\t1\t{v}\t{now}\n")
                copy.write(buf.getvalue())
        conn.commit()
    engine.dispose()
    return key, metric_jobs[0], team0


async def drive(base: str, path: str, key: str, seconds: float, concurrency: int) -> tuple[int, list[float]]:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"}, limits=limits, timeout=30) as client:

        async def loop() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                r = await client.get(path)
                latencies.append(time.perf_counter() - t0)
                errors += r.status_code != 200

        await asyncio.gather(*(loop() for _ in range(concurrency)))
    return errors, latencies


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--concurrency", type=int, default=16)
    args = ap.parse_args()
    with fresh_database("bench") as url:
        t0 = time.perf_counter()
        key, job_id, _team = seed(url)
        print(f"seeded {N_JOBS:,} jobs and {METRIC_JOBS * STEPS:,} metric points in {time.perf_counter() - t0:.1f}s")
        port = free_port()
        env = {
            "TUNEFORGE_DATABASE_URL": url,
            "TUNEFORGE_BROKER_URL": "redis://127.0.0.1:6379/15",
            "TUNEFORGE_SECRET_KEY": secrets.token_urlsafe(32),
            "TUNEFORGE_PUBLIC_URL": f"http://127.0.0.1:{port}",
        }
        with run_api(env, port) as base:
            cases = [
                ("trivial  GET /healthz", "/healthz"),
                ("retrieve GET /v1/fine_tuning/jobs/{id}", f"/v1/fine_tuning/jobs/{job_id}"),
                ("list     GET /v1/fine_tuning/jobs?limit=20", "/v1/fine_tuning/jobs?limit=20"),
                ("metrics  GET …/{id}/metrics?max_points=200", f"/v1/fine_tuning/jobs/{job_id}/metrics?max_points=200"),
            ]
            asyncio.run(drive(base, "/healthz", key, 1.0, 4))  # warm up connections and imports
            base_rps = None
            print(f"\nconcurrency {args.concurrency}, {args.seconds:.0f}s per endpoint, one uvicorn process, loopback")
            print(f"{'endpoint':46} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'rps vs trivial':>15}")
            for label, path in cases:
                errors, lat = asyncio.run(drive(base, path, key, args.seconds, args.concurrency))
                rps = len(lat) / args.seconds
                base_rps = base_rps or rps
                q = statistics.quantiles(lat, n=100)
                print(f"{label:46} {rps:8.1f} {q[49] * 1000:8.1f} {q[98] * 1000:8.1f} {errors:7d} {rps / base_rps:15.2f}")


if __name__ == "__main__":
    main()
