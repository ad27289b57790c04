"""The runner against its own PostgreSQL database, local store and the tiny model."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from core.config import Settings
from core.jobrequest import JobCreateRequest
from core.services.auth import create_team
from core.services.files import upload_file
from core.services.jobs import create_job
from core.storage import get_store
from tests.conftest import fresh_database, settings_from_env
from tests.jobdata import (
    EVALUATION,
    TEMPLATE,
    hyperparameters,
    jsonl,
    news_rows,
    tiny_model,
)


@pytest.fixture(scope="session")
def worker_db() -> Iterator[str]:
    with fresh_database("worker") as url:
        yield url


@pytest.fixture(scope="session")
def engine(worker_db):
    eng = create_engine(worker_db)
    yield eng
    eng.dispose()


@pytest.fixture(scope="session")
def wsettings(settings_env, worker_db, tmp_path_factory) -> Settings:
    root = tmp_path_factory.mktemp("worker-stack")
    return settings_from_env({
        **settings_env,
        "TUNEFORGE_DATABASE_URL": worker_db,
        "TUNEFORGE_WORK_DIR": str(root / "work"),
        "TUNEFORGE_ARTIFACTS_URL": f"file://{root / 'artifacts'}",
        "TUNEFORGE_HEARTBEAT_SECONDS": "0.5",
    })


@pytest.fixture(scope="session")
def store(wsettings):
    return get_store(wsettings)


@pytest.fixture(scope="session")
def model_dir(stack_dir) -> Path:
    return tiny_model(stack_dir / "models")


@pytest.fixture(scope="session")
def team_id(engine) -> str:
    with Session(engine) as s:
        team = create_team(s, f"worker-{secrets.token_hex(3)}")
        s.commit()
        return team.id


@pytest.fixture
def make_job(engine, wsettings, store, team_id, model_dir):
    """A committed, queued job on real uploaded data; returns its id."""

    def make(max_steps: int = 4, model: Path | None = None, every: int = 2, accumulate: int = 1, **body) -> str:
        with Session(engine) as s:
            import io

            f = upload_file(s, wsettings, store, team_id, filename="news.jsonl", purpose="fine-tune",
                            stream=io.BytesIO(jsonl(news_rows())))
            request = JobCreateRequest(
                model=str(model or model_dir), training_file=f.id, suffix="w",
                hyperparameters=hyperparameters(max_steps, every, accumulate), template=TEMPLATE, evaluation=EVALUATION,
                validation_split=0.25, **body,
            )
            job, _ = create_job(s, wsettings, team_id, request)
            s.commit()
            return job.id

    return make
