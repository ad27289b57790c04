"""`tuneforge up`: the whole service on one machine with nothing else installed.

SQLite instead of PostgreSQL, kombu's filesystem transport instead of Redis, a local
artifact directory instead of S3 — all under one home directory (default `.tuneforge/`),
with a generated secret kept there so download links survive a restart. The API and one
worker run as child processes (core never imports fastapi or celery); both stop with `up`.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select

from core.config import FILESYSTEM_BROKER, Settings

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TEAM = "default"


def embedded_env(home: Path, host: str, port: int, environ: dict[str, str] | None = None) -> dict[str, str]:
    """TUNEFORGE_* values of the embedded stack; variables already set by the user win."""
    home = home.resolve()
    environ = dict(os.environ if environ is None else environ)
    secret_file = home / "secret_key"
    if not secret_file.exists():
        home.mkdir(parents=True, exist_ok=True)
        secret_file.write_text(secrets.token_urlsafe(32))
        secret_file.chmod(0o600)
    defaults = {
        "TUNEFORGE_EMBEDDED": "1",
        "TUNEFORGE_HOME": str(home),
        "TUNEFORGE_DATABASE_URL": f"sqlite:///{home / 'tuneforge.db'}",
        "TUNEFORGE_BROKER_URL": f"{FILESYSTEM_BROKER}{home / 'broker'}",
        "TUNEFORGE_ARTIFACTS_URL": f"file://{home / 'artifacts'}",
        "TUNEFORGE_WORK_DIR": str(home / "work"),
        "TUNEFORGE_SECRET_KEY": secret_file.read_text().strip(),
        "TUNEFORGE_PUBLIC_URL": f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}",
        "TUNEFORGE_MODEL_ROOTS": str(home / "models"),
    }
    env = {**defaults, **{k: v for k, v in environ.items() if k.startswith("TUNEFORGE_")}}
    env["TUNEFORGE_EMBEDDED"] = "1"
    return env


def ensure_default_key(settings: Settings) -> str:
    """The key `up` prints: kept in <home>/api_key (only its hash is in the database)."""
    from core.db import make_engine, session_scope
    from core.errors import Unauthorized
    from core.models import Team
    from core.services.auth import authenticate, create_api_key, create_team

    key_file = settings.home.resolve() / "api_key"
    engine = make_engine(settings.database_url)
    try:
        with session_scope(engine) as s:
            if key_file.exists():
                key = key_file.read_text().strip()
                try:
                    authenticate(s, key)
                    return key
                except Unauthorized:  # revoked, or the database was reset: make a new one
                    pass
            team = s.scalars(select(Team).where(Team.name == DEFAULT_TEAM)).one_or_none() or create_team(s, DEFAULT_TEAM)
            _row, key = create_api_key(s, team.id, name="tuneforge up")
        key_file.write_text(key + "\n")
        key_file.chmod(0o600)
        return key
    finally:
        engine.dispose()


def api_command(host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "uvicorn", "api.app:app", "--host", host, "--port", str(port), "--log-level", "warning"]


def worker_command(queues: str | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "--loglevel=INFO",
           "--without-gossip", "--without-mingle", "--without-heartbeat"]
    if queues:
        cmd += ["-Q", queues]
    return cmd


def child_env(env: dict[str, str]) -> dict[str, str]:
    """Children must import api/ and worker/ from this checkout, wherever `up` was run."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, **env, "PYTHONPATH": path}


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the API exited with code {proc.returncode} during start-up")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the API did not answer {url}/healthz within {timeout:g}s")


def stop(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM (the worker re-queues a running job), then SIGKILL after `timeout`."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def up(home: Path, host: str, port: int, slots: int, say: Callable[[str], None]) -> int:
    """Migrate, make sure a key exists, run API + worker until Ctrl-C / SIGTERM."""
    from core.migrate import upgrade_head

    env = embedded_env(home, host, port)
    os.environ.update(env)  # in-process Settings (migrate, key) read the same values
    settings = Settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    (settings.home / "models").mkdir(exist_ok=True)
    settings.ensure_broker_folders()
    upgrade_head(settings.database_url)
    key = ensure_default_key(settings)

    env = child_env({**env, "TUNEFORGE_WORKER_SLOTS": str(slots)})
    logs = settings.home / "logs"
    logs.mkdir(exist_ok=True)
    procs: list[subprocess.Popen] = []

    def _terminate(_signum, _frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        with (logs / "api.log").open("ab") as api_log, (logs / "worker.log").open("ab") as worker_log:
            # Own sessions: Ctrl-C reaches `up` only, which stops the children in order.
            api = subprocess.Popen(api_command(host, port), cwd=REPO, env=env, stdout=api_log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
            procs.append(api)
            worker = subprocess.Popen(worker_command(), cwd=REPO, env=env, stdout=worker_log,
                                      stderr=subprocess.STDOUT, start_new_session=True)
            procs.append(worker)
        wait_healthy(settings.public_url, api)
        say(f"tuneforge is up at {settings.public_url}  (home: {settings.home.resolve()}, logs: {logs})")
        say(f"models under {settings.home.resolve() / 'models'} are allowed; Ctrl-C stops the API and the worker")
        say("OPENAI_BASE_URL=" + settings.public_url + "/v1")
        say("API key (team 'default'):")
        say(key)
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        dead = [name for name, p in zip(("api", "worker"), procs, strict=True) if p.poll() is not None]
        say(f"{', '.join(dead)} exited; see {logs}; stopping")
        return 1
    except KeyboardInterrupt:
        say("stopping")
        return 0
    finally:
        # A second signal (a repeated Ctrl-C, `timeout` signalling the whole group) must not
        # abort the shutdown half-way and leave the children running.
        previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for p in reversed(procs):
            stop(p)
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
