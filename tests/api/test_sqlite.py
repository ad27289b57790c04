"""The embedded default: the same API on a SQLite file (migrated with Alembic), and the
upload size limit (a small one here, so the test sends little)."""

from __future__ import annotations

import secrets

import httpx
import pytest
from sqlalchemy.orm import Session

from core.db import make_engine
from core.migrate import upgrade_head
from core.services.auth import create_api_key, create_team
from tests.api.conftest import NEWS_ROWS, Api, jsonl, queued_messages
from tests.conftest import free_port, run_api

LIMIT = 4096


@pytest.fixture(scope="module")
def sqlite_stack(tmp_path_factory, settings_env):
    url = f"sqlite:///{tmp_path_factory.mktemp('embedded') / 'tuneforge.db'}"
    upgrade_head(url)
    queue = f"tuneforge-sqlite-{secrets.token_hex(4)}"
    port = free_port()
    env = {**settings_env, "TUNEFORGE_DATABASE_URL": url, "TUNEFORGE_QUEUE": queue,
           "TUNEFORGE_MAX_UPLOAD_BYTES": str(LIMIT), "TUNEFORGE_PUBLIC_URL": f"http://127.0.0.1:{port}"}
    engine = make_engine(url)
    with Session(engine) as s:
        team = create_team(s, "embedded")
        _, key = create_api_key(s, team.id)
        s.commit()
        team_id = team.id
    with run_api(env, port) as base:
        yield Api(base, team_id, key), queue
    engine.dispose()


def test_jobs_and_files_on_sqlite(sqlite_stack, model_dir, redis_client):
    api, queue = sqlite_stack
    job = api.job(str(model_dir)).json()
    assert job["status"] == "queued"
    assert queued_messages(redis_client, queue) == []  # waits in SQL for the scheduler
    assert api.sdk.fine_tuning.jobs.list().data[0].id == job["id"]
    assert api.sdk.fine_tuning.jobs.pause(job["id"]).status == "paused"
    assert api.sdk.fine_tuning.jobs.cancel(job["id"]).status == "cancelled"
    events = api.sdk.fine_tuning.jobs.list_events(job["id"]).data
    assert [e.data["to"] for e in events] == ["cancelled", "paused", "queued"]
    assert httpx.get(f"{api.base}/readyz").status_code == 200


def test_declared_oversize_upload_is_refused_before_reading(sqlite_stack):
    api, _ = sqlite_stack
    r = api.upload(b'{"a": "' + b"x" * (LIMIT + 70_000) + b'"}\n')
    assert r.status_code == 413 and str(LIMIT) in r.json()["error"]["message"] and r.json()["error"]["param"] == "file"


def test_streamed_oversize_upload_is_refused_naming_the_limit(sqlite_stack):
    """Chunked (no Content-Length): the service's byte count stops it."""
    api, _ = sqlite_stack
    boundary = "tfboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.jsonl\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()

    def body():
        yield head
        for _ in range(4):
            yield jsonl(NEWS_ROWS) * 8
        yield tail

    r = api.http.post("/v1/files", content=body(), headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 413, r.text
    assert str(LIMIT) in r.json()["error"]["message"] and "big.jsonl" in r.json()["error"]["message"]
    assert api.upload(jsonl(NEWS_ROWS)).status_code == 200  # under the limit is fine


def test_broker_down_not_ready_but_jobs_still_recorded(tmp_path, settings_env, model_dir):
    """SQL is the source of truth: with the broker away the job is still accepted and
    `queued` (the reconciler sends it later), and /readyz says 503."""
    url = f"sqlite:///{tmp_path / 'tf.db'}"
    upgrade_head(url)
    engine = make_engine(url)
    with Session(engine) as s:
        team = create_team(s, "no-broker")
        _, key = create_api_key(s, team.id)
        s.commit()
        team_id = team.id
    port = free_port()
    env = {**settings_env, "TUNEFORGE_DATABASE_URL": url, "TUNEFORGE_BROKER_URL": f"redis://127.0.0.1:{free_port()}/1"}
    with run_api(env, port) as base:
        ready = httpx.get(f"{base}/readyz", timeout=30)
        assert ready.status_code == 503 and ready.json()["checks"] == {"database": True, "broker": False}
        job = Api(base, team_id, key).job(str(model_dir))
        assert job.status_code == 200 and job.json()["status"] == "queued"
    engine.dispose()
