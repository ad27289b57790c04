"""Clients for the live API: httpx and the official openai SDK, each as a fresh team."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import openai
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.models import Job
from core.services import jobs, runs
from core.states import ACTIVE, TERMINAL, JobStatus

NEWS_ROWS = [
    {"document": "서울시는 오늘 새로운 자전거 도로를 개통했다고 밝혔다.", "summary": "서울시, 자전거 도로 개통"},
    {"document": "연구진은 새로운 배터리 소재를 개발했다.", "summary": "새 배터리 소재 개발"},
    {"document": "올해 여름은 평년보다 더울 것으로 예상된다.", "summary": "올여름 더위 예상"},
]


def jsonl(rows) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


@pytest.fixture(scope="session")
def model_dir(stack_dir) -> Path:
    """A directory inside the session's allowed model root (no weights needed without a worker)."""
    d = stack_dir / "models" / "tiny-llama"
    d.mkdir(exist_ok=True)
    return d


class Api:
    """A team's view of the live API."""

    def __init__(self, base: str, team_id: str, key: str):
        self.base, self.team_id, self.key = base, team_id, key
        self.http = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        self.sdk = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=30)

    def upload(self, content: bytes, filename: str = "train.jsonl") -> httpx.Response:
        return self.http.post("/v1/files", files={"file": (filename, content)}, data={"purpose": "fine-tune"})

    def file_id(self, rows=NEWS_ROWS, filename: str = "train.jsonl") -> str:
        r = self.upload(jsonl(rows), filename)
        assert r.status_code == 200, r.text
        return r.json()["id"]

    def job(self, model: str, **body) -> httpx.Response:
        body.setdefault("training_file", self.file_id())
        body.setdefault("template", {"prompt": "요약: {document}", "completion": "{summary}"})
        return self.http.post("/v1/fine_tuning/jobs", json={"model": model, **body})


def finish_team_jobs(engine, team_id: str) -> None:
    """Leave no job waiting or "running" behind in the shared stack: a worker started on
    settings_env (same queue, same database) must not pick up this suite's jobs."""
    with Session(engine) as s:
        for job in s.scalars(select(Job).where(Job.team_id == team_id, Job.status.not_in([t.value for t in TERMINAL]))):
            if job.status in ACTIVE:
                runs.finish(s, job.id, job.attempt, JobStatus.CANCELLED, message="test teardown")
            else:
                jobs.cancel_job(s, team_id, job.id)
        s.commit()


@pytest.fixture
def make_api(live_api, make_team, stack_engine):
    """make_api(**team_fields) -> Api for a new team; its jobs are cancelled after the test."""
    made: list[Api] = []

    def make(**team_fields) -> Api:
        made.append(Api(live_api, *make_team(**team_fields)))
        return made[-1]

    yield make
    for a in made:
        finish_team_jobs(stack_engine, a.team_id)


@pytest.fixture
def api(make_api) -> Api:
    return make_api()


@pytest.fixture
def other(make_api) -> Api:
    return make_api()


def queued_messages(redis_client, queue: str) -> list[dict]:
    """The Celery messages waiting in `queue` (kombu's Redis transport keeps a list per queue)."""
    out = []
    for raw in redis_client.lrange(queue, 0, -1):
        msg = json.loads(raw)
        args, kwargs, _ = json.loads(base64.b64decode(msg["body"]))
        out.append({"task": msg["headers"]["task"], "args": args, "kwargs": kwargs})
    return out


@pytest.fixture
def run_as_worker(stack_engine):
    """Claims a job and writes what a runner writes, through core.services.runs (the same
    functions the worker calls), so the read endpoints are tested on real run data."""

    def claim(job_id: str):
        with Session(stack_engine) as s:
            c = runs.claim_job(s, job_id, "test-worker:1", 60)
            s.commit()
        assert c is not None
        return c

    return claim
