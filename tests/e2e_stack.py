"""The whole service as processes: a real uvicorn API and a real Celery worker (which
spawns real training children) on their own database and a queue of their own, driven by
the official openai SDK. Session-scoped and registered in tests/conftest.py, so tests/e2e,
tests/cli and tests/browser share ONE stack per run (started on first use, stopped at the end)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from core.services.auth import create_api_key, create_team
from tests.conftest import free_port, fresh_database, run_api
from tests.jobdata import (
    EVALUATION,
    TEMPLATE,
    hyperparameters,
    jsonl,
    news_rows,
    tiny_model,
)
from tests.stacks import celery_worker as start_worker

TERMINAL = {"succeeded", "failed", "cancelled"}


@pytest.fixture(scope="session")
def e2e_env(settings_env, tmp_path_factory) -> Iterator[dict[str, str]]:
    root = tmp_path_factory.mktemp("e2e")
    port = free_port()
    with fresh_database("e2e") as url:
        yield {
            **settings_env,
            "TUNEFORGE_DATABASE_URL": url,
            "TUNEFORGE_QUEUE": f"tuneforge-e2e-{secrets.token_hex(4)}",
            "TUNEFORGE_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "TUNEFORGE_API_PORT": str(port),
            "TUNEFORGE_ARTIFACTS_URL": f"file://{root / 'artifacts'}",
            "TUNEFORGE_WORK_DIR": str(root / "work"),
            "TUNEFORGE_HEARTBEAT_SECONDS": "0.5",
            "TUNEFORGE_DRY_RUN_TIMEOUT_SECONDS": "30",
        }


@pytest.fixture(scope="session")
def celery_worker(e2e_env, tmp_path_factory):
    log = tmp_path_factory.mktemp("e2e-logs") / "worker.log"
    with start_worker(e2e_env, log) as proc:
        proc.log_path = log
        yield proc


@pytest.fixture(scope="session")
def e2e_api(e2e_env, celery_worker) -> Iterator[str]:
    with run_api(e2e_env, int(e2e_env["TUNEFORGE_API_PORT"])) as base:
        yield base


@pytest.fixture(scope="session")
def e2e_model(stack_dir) -> Path:
    return tiny_model(stack_dir / "models")


def team_key(env: dict[str, str], name: str) -> str:
    engine = create_engine(env["TUNEFORGE_DATABASE_URL"])
    try:
        with Session(engine) as s:
            team = create_team(s, f"{name}-{secrets.token_hex(3)}")
            _row, key = create_api_key(s, team.id)
            s.commit()
            return key
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def e2e_key(e2e_env) -> str:
    return team_key(e2e_env, "e2e")


class Client:
    """The openai SDK for the standard calls, httpx for our extensions (same key)."""

    def __init__(self, base: str, key: str, model: Path, worker_pid: int):
        self.base, self.model, self.worker_pid = base, model, worker_pid
        self.sdk = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=60)
        self.http = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60)

    def create_job(self, max_steps: int, every: int = 2, rows: int = 8, accumulate: int = 1):
        f = self.sdk.files.create(file=("news.jsonl", jsonl(news_rows(rows))), purpose="fine-tune")
        return self.sdk.fine_tuning.jobs.create(
            model=str(self.model), training_file=f.id, suffix="e2e",
            hyperparameters=hyperparameters(max_steps, every, accumulate),
            extra_body={"template": TEMPLATE, "evaluation": EVALUATION, "validation_split": 0.25},
        )

    def wait(self, job_id: str, until, timeout: float = 180, what: str = "state"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.sdk.fine_tuning.jobs.retrieve(job_id)
            if until(job):
                return job
            time.sleep(0.3)
        raise AssertionError(f"job {job_id} did not reach {what} in {timeout}s; last status {job.status}")

    def wait_terminal(self, job_id: str, timeout: float = 180):
        return self.wait(job_id, lambda j: j.status in TERMINAL, timeout, "a terminal status")


@pytest.fixture(scope="session")
def client(e2e_api, e2e_key, e2e_model, celery_worker) -> Client:
    return Client(e2e_api, e2e_key, e2e_model, celery_worker.pid)


def training_processes(job_id: str) -> list[int]:
    """Pids of live `worker.child` processes working on this job (scanned in /proc)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().split(") ")[1].split()[0]
        except OSError:
            continue
        if "worker.child" in cmd and f"/{job_id}/" in cmd and state != "Z":
            pids.append(int(proc.name))
    return pids
