"""Load test: 64 clients mixing polls, creates, uploads and event streams against one API
process on loopback, then a check that every job the API said it created exists.

8 teams of 8 clients each. A client loops for --seconds, choosing each time:
  poll   55%  GET a job of its team, the job list, or the job's events
  create 20%  POST /v1/fine_tuning/jobs (one of the team's files)
  upload 15%  POST /v1/files (a small JSONL file)
  stream 10%  GET …/stream, read the first `status` event, hang up

    python bench/load.py [--seconds 60] [--clients 64]

Prints per-kind counts, req/s, p50/p99 latency and errors, then the lost-job check (every
201/200 create must be listed and retrievable by its team). Exits 1 on any error or lost
job. Needs PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379; no worker is started
(jobs stay queued, which is the state clients poll most).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import secrets
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import httpx
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.services.auth import create_api_key, create_team  # noqa: E402
from tests.conftest import fresh_database, free_port, run_api  # noqa: E402

TEAMS = 8
ROWS = [{"document": f"문서 {i}: 서울시는 새 도로를 개통했다.", "summary": f"요약 {i}"} for i in range(20)]
DATA = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS).encode()
TEMPLATE = {"prompt": "요약: {document}", "completion": "{summary}"}
KINDS = [("poll", 55), ("create", 20), ("upload", 15), ("stream", 10)]


class Stats:
    def __init__(self):
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, list[str]] = defaultdict(list)
        self.created: dict[str, set[str]] = defaultdict(set)  # team key -> job ids


async def client(base: str, key: str, model: str, files: list[str], jobs: list[str], deadline: float, stats: Stats, rng: random.Random):
    kinds, weights = zip(*KINDS)
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60) as http:
        while time.perf_counter() < deadline:
            kind = rng.choices(kinds, weights)[0]
            t0 = time.perf_counter()
            try:
                if kind == "poll":
                    target = rng.choice(jobs)
                    path = rng.choice([f"/v1/fine_tuning/jobs/{target}", "/v1/fine_tuning/jobs?limit=20",
                                       f"/v1/fine_tuning/jobs/{target}/events"])
                    r = await http.get(path)
                elif kind == "create":
                    body = {"model": model, "training_file": rng.choice(files), "template": TEMPLATE,
                            "hyperparameters": {"max_steps": 10}}
                    r = await http.post("/v1/fine_tuning/jobs", json=body)
                    if r.status_code == 200:
                        stats.created[key].add(r.json()["id"])
                        jobs.append(r.json()["id"])
                elif kind == "upload":
                    r = await http.post("/v1/files", files={"file": ("t.jsonl", DATA)}, data={"purpose": "fine-tune"})
                    if r.status_code == 200:
                        files.append(r.json()["id"])
                else:
                    async with http.stream("GET", f"/v1/fine_tuning/jobs/{rng.choice(jobs)}/stream") as r:
                        if r.status_code == 200:
                            async for line in r.aiter_lines():
                                if line.startswith("event: status"):
                                    break
                if r.status_code != 200:
                    stats.errors[kind].append(f"{r.status_code} {r.text[:200] if not r.is_stream_consumed else ''}")
            except httpx.HTTPError as e:
                stats.errors[kind].append(f"{type(e).__name__}: {e}")
            stats.latency[kind].append(time.perf_counter() - t0)


async def lost_jobs(base: str, stats: Stats) -> list[str]:
    """Created ids that the team's list or retrieve does not show."""
    lost: list[str] = []
    for key, ids in stats.created.items():
        async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60) as http:
            listed: set[str] = set()
            after = None
            while True:
                page = (await http.get("/v1/fine_tuning/jobs", params={"limit": 100, **({"after": after} if after else {})})).json()
                listed |= {j["id"] for j in page["data"]}
                if not page["has_more"]:
                    break
                after = page["last_id"]
            for job_id in ids:
                if job_id not in listed or (await http.get(f"/v1/fine_tuning/jobs/{job_id}")).status_code != 200:
                    lost.append(job_id)
    return lost


async def run(base: str, teams: list[tuple[str, str]], model: str, seconds: float, clients: int) -> tuple[Stats, list[str], float]:
    stats = Stats()
    pools: dict[str, tuple[list[str], list[str]]] = {}
    for _team, key in teams:  # each team starts with one file and one job to poll
        async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60) as http:
            fid = (await http.post("/v1/files", files={"file": ("t.jsonl", DATA)}, data={"purpose": "fine-tune"})).json()["id"]
            job = (await http.post("/v1/fine_tuning/jobs", json={"model": model, "training_file": fid, "template": TEMPLATE})).json()["id"]
            pools[key] = ([fid], [job])
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    await asyncio.gather(*(
        client(base, teams[i % len(teams)][1], model, *pools[teams[i % len(teams)][1]], deadline, stats, random.Random(i))
        for i in range(clients)
    ))
    elapsed = time.perf_counter() - started
    return stats, await lost_jobs(base, stats), elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--clients", type=int, default=64)
    args = ap.parse_args()
    with fresh_database("load") as url, tempfile.TemporaryDirectory(prefix="tuneforge-load-") as tmp:
        models = Path(tmp) / "models"
        (models / "tiny").mkdir(parents=True)
        engine = create_engine(url)
        teams = []
        with Session(engine) as s:
            for i in range(TEAMS):
                team = create_team(s, f"load-{i}")
                _row, key = create_api_key(s, team.id)
                teams.append((team.id, key))
            s.commit()
        engine.dispose()
        port = free_port()
        env = {
            "TUNEFORGE_DATABASE_URL": url,
            "TUNEFORGE_BROKER_URL": "redis://127.0.0.1:6379/15",
            "TUNEFORGE_QUEUE": f"tuneforge-load-{secrets.token_hex(4)}",
            "TUNEFORGE_SECRET_KEY": secrets.token_urlsafe(32),
            "TUNEFORGE_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "TUNEFORGE_ARTIFACTS_URL": f"file://{tmp}/artifacts",
            "TUNEFORGE_MODEL_ROOTS": str(models),
        }
        with run_api(env, port) as base:
            stats, lost, elapsed = asyncio.run(run(base, teams, str(models / "tiny"), args.seconds, args.clients))
    total = sum(len(v) for v in stats.latency.values())
    n_errors = sum(len(v) for v in stats.errors.values())
    print(f"{args.clients} clients ({TEAMS} teams), {elapsed:.0f}s, one uvicorn process, loopback: {total:,} requests, {total / elapsed:.0f} req/s")
    print(f"{'kind':8} {'count':>8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for kind, _w in KINDS:
        lat = stats.latency[kind]
        q = statistics.quantiles(lat, n=100) if len(lat) >= 2 else [lat[0] if lat else 0.0] * 99
        print(f"{kind:8} {len(lat):8,} {len(lat) / elapsed:8.1f} {q[49] * 1000:8.1f} {q[98] * 1000:8.1f} {len(stats.errors[kind]):7d}")
    created = sum(len(v) for v in stats.created.values())
    print(f"jobs created: {created:,}; lost (not listed or not retrievable by their team): {len(lost)}")
    for kind, errs in stats.errors.items():
        for e in errs[:3]:
            print(f"  {kind} error: {e}")
    sys.exit(1 if n_errors or lost else 0)


if __name__ == "__main__":
    main()
