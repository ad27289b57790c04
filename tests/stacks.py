"""Processes and databases the worker and end-to-end suites start for themselves.

These suites commit real rows and run a worker that registers in the `workers` table, so
they use their own database: the shared session database stays as the API and scheduling
tests expect it. Every helper is a context manager that stops what it started.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from core.db import make_engine
from core.models import Worker
from tests.conftest import REPO


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def celery_worker(env: dict[str, str], log_path: Path, timeout: float = 60) -> Iterator[subprocess.Popen]:
    """`celery -A worker.app worker` as a real process; ready once it registered in SQL.

    It leads its own process group (so a test can kill "the machine": the group, plus the
    training children, which run in sessions of their own); `proc.worker_id` is its id in
    the `workers` table and `proc.log_path` its log."""
    full_env = {**os.environ, **env}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "--loglevel=INFO", "--without-heartbeat",
             "--without-gossip", "--without-mingle", "-n", f"e2e-{secrets.token_hex(3)}@%h"],
            cwd=REPO, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    proc.log_path = log_path
    engine = create_engine(env["TUNEFORGE_DATABASE_URL"])
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"celery worker exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            with Session(engine) as s:
                row = s.scalars(select(Worker).where(Worker.id.endswith(f":{proc.pid}"), Worker.active.is_(True))).first()
                if row is not None:
                    proc.worker_id = row.id
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"celery worker did not register within {timeout}s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        yield proc
    finally:
        engine.dispose()
        stop_process(proc)


# --- a pool of its own: one test's database, queue and workers -----------------------------

# Timings that make leases, dispatches and dead workers expire in seconds, not minutes.
FAST = {
    "TUNEFORGE_LEASE_SECONDS": "5",
    "TUNEFORGE_HEARTBEAT_SECONDS": "0.5",
    "TUNEFORGE_SCHEDULE_INTERVAL_SECONDS": "0.25",
    "TUNEFORGE_DISPATCH_TIMEOUT_SECONDS": "3",
    "TUNEFORGE_WORKER_TIMEOUT_SECONDS": "3",
}
QUICK_EVALUATION = {"generation_samples": 0, "max_samples": 0}  # no generation: these jobs test scheduling


class Pool:
    """A scheduler pool nobody else schedules on: its own database (so no other test's
    worker picks its jobs up), queue, work and artifact dirs. Jobs are created through the
    same services the API uses; workers are real `celery worker` processes."""

    def __init__(self, env: dict[str, str], root: Path, model: Path):
        from tests.conftest import settings_from_env

        self.env, self.root, self.model = env, root, model
        self.settings = settings_from_env(env)
        self.engine = make_engine(env["TUNEFORGE_DATABASE_URL"])  # pre-ping: tests kill backends
        self._n = 0

    def worker(self, **env: str):
        self._n += 1
        return celery_worker({**self.env, **env}, self.root / f"worker-{self._n}.log")

    def team(self, **fields) -> str:
        from core.services.auth import create_team

        with Session(self.engine) as s:
            team = create_team(s, f"team-{secrets.token_hex(3)}", **fields)
            s.commit()
            return team.id

    def job(self, team_id: str, max_steps: int, every: int = 2, accumulate: int = 1, **body) -> str:
        import io

        from core.jobrequest import JobCreateRequest
        from core.services.files import upload_file
        from core.services.jobs import create_job
        from core.storage import get_store
        from tests.jobdata import TEMPLATE, hyperparameters, jsonl, news_rows

        with Session(self.engine) as s:
            f = upload_file(s, self.settings, get_store(self.settings), team_id, filename="n.jsonl",
                            purpose="fine-tune", stream=io.BytesIO(jsonl(news_rows())))
            body.setdefault("evaluation", QUICK_EVALUATION)
            job, _ = create_job(s, self.settings, team_id, JobCreateRequest(
                model=str(self.model), training_file=f.id, template=TEMPLATE,
                hyperparameters=hyperparameters(max_steps, every, accumulate), **body))
            s.commit()
            return job.id

    def row(self, job_id: str):
        from core.models import Job

        with Session(self.engine) as s:
            return s.get(Job, job_id)

    def events(self, job_id: str) -> list:
        from core.models import JobEvent

        with Session(self.engine) as s:
            return list(s.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)))

    def messages(self, job_id: str) -> list[str]:
        return [e.message for e in self.events(job_id)]

    def metric_steps(self, job_id: str) -> list[int]:
        from core.models import Metric

        with Session(self.engine) as s:
            return list(s.scalars(select(Metric.step).where(Metric.job_id == job_id).order_by(Metric.step)))

    def wait(self, pred, what: str, timeout: float = 120, poll: float = 0.2):
        deadline = time.monotonic() + timeout
        while True:
            value = pred()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(poll)

    def wait_status(self, job_id: str, statuses, timeout: float = 120):
        statuses = {statuses} if isinstance(statuses, str) else set(statuses)
        self.wait(lambda: self.row(job_id).status in statuses, f"job {job_id} to be {sorted(statuses)} "
                  f"(it is {self.row(job_id).status})", timeout)
        return self.row(job_id)

    def close(self) -> None:
        self.engine.dispose()


@contextmanager
def own_pool(base_env: dict[str, str], root: Path, model: Path, tag: str = "pool", **env: str) -> Iterator[Pool]:
    from tests.conftest import fresh_database

    for sub in ("artifacts", "work"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    with fresh_database(tag) as url:
        pool = Pool({
            **base_env, **FAST,
            "TUNEFORGE_DATABASE_URL": url,
            "TUNEFORGE_QUEUE": f"tuneforge-{tag}-{secrets.token_hex(4)}",
            "TUNEFORGE_ARTIFACTS_URL": f"file://{root / 'artifacts'}",
            "TUNEFORGE_WORK_DIR": str(root / "work"),
            **env,
        }, root, model)
        try:
            yield pool
        finally:
            pool.close()


def children(pid: int) -> list[int]:
    """Direct children of pid (the training processes of a worker), from /proc."""
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                stat = (p / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(") ", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(p.name))
    return out


def kill_machine(proc: subprocess.Popen) -> list[int]:
    """SIGKILL a worker as a power cut would: its process group and its training children
    (which lead sessions of their own). Returns the children's pids."""
    kids = children(proc.pid)
    for pid in kids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(10)
    return kids
