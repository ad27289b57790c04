"""The API and the database connections can go away while a job trains: the API is not on
the worker's write path, and the runner retries a write whose connection was killed."""

from __future__ import annotations

import time

import httpx
import openai
import psycopg
from sqlalchemy.orm import Session

from core.services.auth import create_api_key
from tests.conftest import PG_ADMIN, free_port, run_api
from tests.faults.conftest import assert_contiguous
from tests.jobdata import TEMPLATE, hyperparameters, jsonl, news_rows
from tests.stacks import QUICK_EVALUATION


def test_api_restart_mid_job_loses_no_status_event_or_metric(pool):
    port = free_port()
    pool.env.update({"TUNEFORGE_PUBLIC_URL": f"http://127.0.0.1:{port}", "TUNEFORGE_API_PORT": str(port)})
    team = pool.team()
    with Session(pool.engine) as s:
        _row, key = create_api_key(s, team)
        s.commit()
    steps = 8
    with pool.worker():
        with run_api(pool.env, port) as base:
            sdk = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=30)
            f = sdk.files.create(file=("n.jsonl", jsonl(news_rows())), purpose="fine-tune")
            job_id = sdk.fine_tuning.jobs.create(
                model=str(pool.model), training_file=f.id,
                hyperparameters=hyperparameters(steps, every=2, accumulate=4),
                extra_body={"template": TEMPLATE, "evaluation": QUICK_EVALUATION}).id
            pool.wait(lambda: sdk.fine_tuning.jobs.retrieve(job_id).status == "running", "running (via the API)")
        # API down: the worker goes on writing to SQL.
        down_at = pool.row(job_id).step or 0
        pool.wait(lambda: (pool.row(job_id).step or 0) >= down_at + 2 or pool.row(job_id).status != "running",
                  "progress while the API is down", timeout=90)
        with run_api(pool.env, port) as base:
            http = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30)
            pool.wait(lambda: http.get(f"/v1/fine_tuning/jobs/{job_id}").json()["status"] in ("succeeded", "failed"),
                      "the job to finish (via the restarted API)", timeout=120)
            job = http.get(f"/v1/fine_tuning/jobs/{job_id}").json()
            assert job["status"] == "succeeded", job.get("error")
            events = http.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 100}).json()["data"]
            series = http.get(f"/v1/fine_tuning/jobs/{job_id}/metrics").json()["data"]
    api_messages = [e["message"] for e in reversed(events)]  # newest first on the wire
    assert api_messages == pool.messages(job_id)  # complete, and in the order they were written
    created = [e["created_at"] for e in reversed(events)]
    assert created == sorted(created)
    for needle in ("Attempt 1 started", "Phase: training", "Checkpoint saved at step 8", "Job succeeded"):
        assert any(m.startswith(needle) for m in api_messages), (needle, api_messages)
    assert [p["step"] for p in series] == list(range(1, steps + 1))
    assert_contiguous(pool, job_id, steps)


def _terminate_backends(database: str) -> int:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        return len(conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,)).fetchall())


def test_runner_writes_survive_killed_database_connections(pool):
    database = pool.engine.url.database
    steps = 8
    job_id = pool.job(pool.team(), max_steps=steps, every=2, accumulate=4)
    with pool.worker() as w:
        pool.wait(lambda: pool.row(job_id).status == "running" and (pool.row(job_id).step or 0) >= 1, "training")
        # A database that keeps dropping connections for seconds, but for less than the 5 s
        # lease (tests/stacks.FAST): a longer outage rightly costs the attempt (the lease
        # lapses and the reconciler requeues), which is test_worker_loss's subject, not this.
        killed, until = 0, time.monotonic() + 3
        while time.monotonic() < until:
            killed += _terminate_backends(database)
            time.sleep(0.02)
        done = pool.wait_status(job_id, ("succeeded", "failed", "cancelled", "queued"), timeout=120)
        log = w.log_path.read_text()
    assert killed > 0
    assert done.status == "succeeded" and done.attempt == 1, done.error
    assert "retrying in" in log, "no runner write met a killed connection: the test proved nothing"
    assert_contiguous(pool, job_id, steps)
