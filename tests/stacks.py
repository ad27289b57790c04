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

import psycopg
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from core.migrate import upgrade_head
from core.models import Worker
from tests.conftest import PG_ADMIN, REPO


@contextmanager
def scratch_database(tag: str) -> Iterator[str]:
    """A fresh PostgreSQL database migrated to head; dropped afterwards."""
    name = f"tuneforge_test_{tag}_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    try:
        upgrade_head(url)
        yield url
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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
    """`celery -A worker.app worker` as a real process; ready once it registered in SQL."""
    full_env = {**os.environ, **env}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "--loglevel=INFO", "--without-heartbeat",
             "--without-gossip", "--without-mingle", "-n", f"e2e-{secrets.token_hex(3)}@%h"],
            cwd=REPO, env=full_env, stdout=log, stderr=subprocess.STDOUT,
        )
    engine = create_engine(env["TUNEFORGE_DATABASE_URL"])
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"celery worker exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            with Session(engine) as s:
                if s.scalars(select(Worker).where(Worker.id.endswith(f":{proc.pid}"), Worker.active.is_(True))).first():
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"celery worker did not register within {timeout}s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        yield proc
    finally:
        engine.dispose()
        stop_process(proc)
