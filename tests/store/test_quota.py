"""Quotas are exact under concurrency: creates and resumes of one team count waiting jobs
one after another (the team row is locked until commit), on a PostgreSQL database where
each request commits in its own session, as API requests do."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from core.config import Settings
from core.errors import QuotaExceeded
from core.jobrequest import JobCreateRequest
from core.models import File, Job, Team
from core.services import auth, jobs
from tests.conftest import fresh_database

SETTINGS = Settings(secret_key="x" * 32)
REQUEST = dict(model="owner/model", template={"prompt": "{document}", "completion": "{summary}"})


@pytest.fixture(scope="module")
def engine() -> Iterator:
    with fresh_database("quota") as url:
        eng = create_engine(url, pool_size=25, max_overflow=0)
        yield eng
        eng.dispose()


def team_with_file(engine, **limits) -> tuple[str, str]:
    with Session(engine) as s:
        team = auth.create_team(s, f"quota-{secrets.token_hex(4)}", **limits)
        f = File(team_id=team.id, filename="d.jsonl", bytes=1, sha256="0" * 64, storage_key="files/x.jsonl",
                 format="jsonl", row_count=1, columns=["document", "summary"])
        s.add(f)
        s.commit()
        return team.id, f.id


def at_once(n: int, action) -> list[BaseException | None]:
    """Run action(i) in n threads released together; the exception each raised, or None."""
    start, results = threading.Barrier(n), [None] * n

    def run(i):
        start.wait()
        try:
            action(i)
        except BaseException as e:  # noqa: BLE001 - reported to the test
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,), name=f"quota-{i}") for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    return results


def waiting(engine, team_id) -> int:
    with Session(engine) as s:
        return s.scalar(select(func.count()).where(Job.team_id == team_id, Job.status.in_(jobs.WAITING)))


def test_twenty_concurrent_creates_with_a_limit_of_two_queue_two(engine):
    team_id, file_id = team_with_file(engine, max_queued_jobs=2)

    def create(_i):
        with Session(engine) as s:
            jobs.create_job(s, SETTINGS, team_id, JobCreateRequest(training_file=file_id, **REQUEST))
            s.commit()

    results = at_once(20, create)
    assert sum(r is None for r in results) == 2
    assert all(isinstance(r, QuotaExceeded) for r in results if r is not None), [r for r in results if r]
    assert waiting(engine, team_id) == 2


def test_concurrent_resumes_respect_the_queued_limit(engine):
    team_id, file_id = team_with_file(engine)
    ids = []
    with Session(engine) as s:
        for _ in range(6):
            job, _ = jobs.create_job(s, SETTINGS, team_id, JobCreateRequest(training_file=file_id, **REQUEST))
            jobs.pause_job(s, team_id, job.id)
            ids.append(job.id)
        s.get(Team, team_id).max_queued_jobs = 1
        s.commit()

    def resume(i):
        with Session(engine) as s:
            jobs.resume_job(s, team_id, ids[i])
            s.commit()

    results = at_once(6, resume)
    assert sum(r is None for r in results) == 1
    assert all(isinstance(r, QuotaExceeded) for r in results if r is not None)
    assert waiting(engine, team_id) == 1
