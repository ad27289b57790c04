"""`tuneforge jobs` as a user runs it: the installed command in a subprocess, against the
end-to-end stack's real API and worker (fixtures shared with tests/e2e)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e_stack import Client, team_key

TUNEFORGE = Path(sys.executable).with_name("tuneforge")


@pytest.fixture(scope="session")
def cli_key(e2e_env) -> str:
    return team_key(e2e_env, "cli")


@pytest.fixture(scope="session")
def cli_client(e2e_api, cli_key, e2e_model, celery_worker) -> Client:
    return Client(e2e_api, cli_key, e2e_model, celery_worker.pid)


@pytest.fixture
def tuneforge(e2e_api, cli_key, tmp_path):
    """tuneforge(*args, env=...) -> CompletedProcess; the API and key come from the environment."""

    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
        base = {k: v for k, v in os.environ.items() if not k.startswith("TUNEFORGE_")}
        full = {**base, "TUNEFORGE_API_URL": e2e_api, "TUNEFORGE_API_KEY": cli_key, "COLUMNS": "200", **(env or {})}
        full = {k: v for k, v in full.items() if v is not None}
        return subprocess.run([str(TUNEFORGE), *args], env=full, cwd=tmp_path, capture_output=True, text=True, timeout=timeout)

    return run
