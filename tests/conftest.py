"""Session-scoped stacks every test suite builds on (real PostgreSQL, Redis, uvicorn).

Several engineers run tests on one machine at once, so each pytest session gets its own
PostgreSQL database, Redis db index, Celery queue name, temp dirs and ports.

Fixtures (names are stable; other conftests build on them):
  pg_url        str   SQLAlchemy URL of a fresh PostgreSQL database, migrated to head, dropped at the end;
                      only for tests that roll back (nothing is committed there)
  stack_pg_url  str   a second such database for the live stack (API, workers), where rows are committed
  redis_url     str   redis://127.0.0.1:6379/<n>, n random in 1..15 (flushed at start; db 0 is never touched)
  queue_name    str   a Celery queue name unique to this session
  settings_env  dict  TUNEFORGE_* variables of the live stack (DATABASE_URL = stack_pg_url, BROKER_URL = redis_url,
                      QUEUE = queue_name, ARTIFACTS_URL, SECRET_KEY, PUBLIC_URL, MODEL_ROOTS, WORK_DIR, HOME, ...);
                      pass `{**os.environ, **settings_env}` to subprocesses
  settings      Settings built from settings_env, for in-process code
  pg_engine     Engine on pg_url;  stack_engine: Engine on stack_pg_url
  stack_dir     Path  temp root with artifacts/, work/, models/ (models/ is the allowed model root)
  pg_session    Session in a transaction rolled back after the test (function scope)
  db_session    = pg_session here; tests/store/conftest.py parametrizes it over PostgreSQL and SQLite
  live_api      str   base URL of a real `uvicorn api.app:app` subprocess on a free port (env = settings_env)
  make_team     callable(name=None, **team_fields) -> (team_id, api_key), committed in stack_pg_url via core.services.auth
  redis_client  redis.Redis on redis_url
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psycopg
import pytest
import redis
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from core.config import Settings
from core.migrate import upgrade_head

REPO = Path(__file__).resolve().parents[1]
# Threads a runner starts (worker.process, worker.transfers) and the tests' runner threads.
RUNNER_THREADS = ("events-", "lease-keeper", "runner-")
LEFTOVER_GRACE_SECONDS = 15.0
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS = "redis://127.0.0.1:6379"


def child_processes(pid: int) -> list[int]:
    """Live (not zombie) direct children of pid, from /proc."""
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                fields = (p / "stat").read_text().rsplit(") ", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(p.name))
    return out


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind():
    """Fails the session loudly when, after every other fixture is torn down, a runner
    thread or a child process (a training child, a worker, a server) is still alive: such a
    leftover goes on writing, retrying or holding ports behind the next run's back. The
    leftovers are killed after they are reported. Set up first, so torn down last."""
    yield
    import signal
    import threading

    deadline = time.monotonic() + LEFTOVER_GRACE_SECONDS
    while True:
        threads = [t.name for t in threading.enumerate() if t.is_alive() and t.name.startswith(RUNNER_THREADS)]
        active = list(getattr(sys.modules.get("worker.runner"), "ACTIVE", {}))
        procs = child_processes(os.getpid())
        if not (threads or active or procs) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    described = []
    for pid in procs:
        try:
            described.append(f"{pid} ({Path(f'/proc/{pid}/cmdline').read_bytes().replace(bytes(1), b' ').decode()[:120]})")
            if os.getpgid(pid) == pid:  # a session leader (a training child): its whole group
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass
    if threads or active or procs:
        pytest.fail(f"left behind at the end of the test session: runner threads {threads}, running jobs {active}, "
                    f"child processes {described}", pytrace=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def fresh_database(tag: str) -> Iterator[str]:
    """A new PostgreSQL database migrated with `alembic upgrade head`; dropped afterwards."""
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


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """For tests that roll back (db_session): nothing is ever committed here, so a test may
    assume the tables hold only what it wrote."""
    with fresh_database("tx") as url:
        yield url


@pytest.fixture(scope="session")
def stack_pg_url() -> Iterator[str]:
    """The database of the live stack (API server, workers): rows are committed and stay."""
    with fresh_database("stack") as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A random non-zero db index, preferring an empty one (another session may be using one)."""
    indexes = list(range(1, 16))
    empty = [i for i in indexes if redis.Redis.from_url(f"{REDIS}/{i}").dbsize() == 0]
    n = secrets.choice(empty or indexes)
    client = redis.Redis.from_url(f"{REDIS}/{n}")
    client.flushdb()
    client.close()
    return f"{REDIS}/{n}"


@pytest.fixture(scope="session")
def redis_client(redis_url) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def queue_name() -> str:
    return f"tuneforge-test-{secrets.token_hex(4)}"


@pytest.fixture(scope="session")
def stack_dir(tmp_path_factory) -> Path:
    """Temp root of this session's stack: artifacts/, work/, models/ (an allowed model root)."""
    root = tmp_path_factory.mktemp("stack")
    for sub in ("artifacts", "work", "models"):
        (root / sub).mkdir()
    return root


@pytest.fixture(scope="session")
def settings_env(stack_pg_url, redis_url, queue_name, stack_dir) -> dict[str, str]:
    api_port = free_port()
    return {
        "TUNEFORGE_DATABASE_URL": stack_pg_url,
        "TUNEFORGE_BROKER_URL": redis_url,
        "TUNEFORGE_QUEUE": queue_name,
        "TUNEFORGE_ARTIFACTS_URL": f"file://{stack_dir / 'artifacts'}",
        "TUNEFORGE_SECRET_KEY": secrets.token_urlsafe(32),
        "TUNEFORGE_PUBLIC_URL": f"http://127.0.0.1:{api_port}",
        "TUNEFORGE_API_PORT": str(api_port),  # read by live_api only (not a Settings field)
        "TUNEFORGE_WORK_DIR": str(stack_dir / "work"),
        "TUNEFORGE_MODEL_ROOTS": str(stack_dir / "models"),
        "TUNEFORGE_HOME": str(stack_dir),
        "TUNEFORGE_DRY_RUN_TIMEOUT_SECONDS": "2",
        "TUNEFORGE_HEARTBEAT_SECONDS": "1",
        "TUNEFORGE_WEBHOOK_ALLOW_PRIVATE_TARGETS": "true",  # the tests' webhook receivers listen on 127.0.0.1
    }


def settings_from_env(env: dict[str, str]) -> Settings:
    return Settings(**{k.removeprefix("TUNEFORGE_").lower(): v for k, v in env.items() if k.startswith("TUNEFORGE_")})


@pytest.fixture(scope="session")
def settings(settings_env) -> Settings:
    return settings_from_env(settings_env)


@pytest.fixture(scope="session")
def pg_engine(pg_url):
    engine = create_engine(pg_url)
    yield engine
    engine.dispose()


@pytest.fixture
def db_session(pg_session) -> Session:
    """The session service tests use (tests/store overrides it to run on SQLite too)."""
    return pg_session


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory):
    """One migrated SQLite file; each test gets a copy (cheaper than migrating each time)."""
    path = tmp_path_factory.mktemp("sqlite") / "template.db"
    upgrade_head(f"sqlite:///{path}")
    return path


@pytest.fixture(params=["postgresql", "sqlite"])
def any_db(request, tmp_path, sqlite_template):
    """A session on each database the service supports: PostgreSQL (deployments; rolled back
    per test) and a fresh copy of a migrated SQLite file (the embedded default)."""
    if request.param == "postgresql":
        yield request.getfixturevalue("pg_session")
        return
    from core.db import make_engine

    path = tmp_path / "tuneforge.db"
    shutil.copy(sqlite_template, path)
    engine = make_engine(f"sqlite:///{path}")
    with Session(engine, expire_on_commit=False) as session:
        yield session
    engine.dispose()


@pytest.fixture
def pg_session(pg_engine) -> Iterator[Session]:
    """Polar-style: the test's commits become savepoints of one transaction rolled back at the end."""
    with pg_engine.connect() as conn:
        trans = conn.begin()
        session = Session(bind=conn, join_transaction_mode="create_savepoint", expire_on_commit=False)
        try:
            yield session
        finally:
            session.close()
            trans.rollback()


@contextmanager
def run_api(env: dict[str, str], port: int) -> Iterator[str]:
    """A real uvicorn server in a subprocess; yields its base URL once /healthz answers."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "api.app:app", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        cwd=REPO,
        env={**os.environ, **env},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"uvicorn exited with {proc.returncode} before answering /healthz")
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not answer /healthz within 30s")
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def live_api(settings_env) -> Iterator[str]:
    with run_api(settings_env, int(settings_env["TUNEFORGE_API_PORT"])) as base:
        yield base


@pytest.fixture(scope="session")
def stack_engine(stack_pg_url):
    engine = create_engine(stack_pg_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def make_team(stack_engine):
    from core.services.auth import create_api_key, create_team

    def make(name: str | None = None, **team_fields) -> tuple[str, str]:
        with Session(stack_engine) as session:
            team = create_team(session, name or f"team-{secrets.token_hex(4)}", **team_fields)
            _row, key = create_api_key(session, team.id)
            session.commit()
            return team.id, key

    return make



# The one end-to-end stack (real API + worker + tiny model), shared by tests/e2e, tests/cli and
# tests/browser: its session fixtures are registered once, here, so all three use one stack.
pytest_plugins = ["tests.e2e_stack"]
