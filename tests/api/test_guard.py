"""api.guard.RequestGuard on a real uvicorn: no body is read before the API key is checked,
and a body over its limit is refused while it streams in, with or without Content-Length.

The server here has its own small limits and its own TMPDIR, so what it spools to disk
can be measured."""

from __future__ import annotations

import json
import os

import httpx
import psutil
import pytest

from tests.api.conftest import Api
from tests.api.rawhttp import multipart, stream_request, zeros
from tests.conftest import free_port, run_api

MiB = 1024 * 1024
UPLOAD_LIMIT = 1 * MiB
REQUEST_LIMIT = 64 * 1024
BOUNDARY = "tfboundary"
FORM = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


@pytest.fixture(scope="module")
def guarded(settings_env, make_team, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("api-tmp")
    port = free_port()
    env = {**settings_env, "TUNEFORGE_PUBLIC_URL": f"http://127.0.0.1:{port}", "TMPDIR": str(tmp),
           "TUNEFORGE_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT), "TUNEFORGE_MAX_REQUEST_BYTES": str(REQUEST_LIMIT)}
    with run_api(env, port) as base:
        server = next(p for p in psutil.Process().children(recursive=True) if f"{port}" in " ".join(p.cmdline()))
        yield Api(base, *make_team()), server, tmp


def spooled(tmp) -> int:
    return sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())


def test_huge_chunked_upload_without_a_key_is_401_after_a_few_mb(guarded):
    api, server, tmp = guarded
    rss_before = server.memory_info().rss
    answer = stream_request(api.base, "POST", "/v1/files", FORM, multipart("big.jsonl", zeros(1536 * MiB)))
    assert answer.status == 401, answer
    assert json.loads(answer.body)["error"]["code"] == "missing_api_key"
    assert answer.sent <= 8 * MiB  # socket buffers only: the server read none of it
    assert spooled(tmp) == 0
    assert server.memory_info().rss - rss_before < 32 * MiB


def test_wrong_key_is_401_before_a_declared_body(guarded):
    api, _server, _tmp = guarded
    headers = {**FORM, "Authorization": "Bearer tf-wrong", "Content-Length": str(1536 * MiB)}
    answer = stream_request(api.base, "POST", "/v1/files", headers, zeros(1536 * MiB), chunked=False)
    assert answer.status == 401 and answer.sent <= 8 * MiB
    assert json.loads(answer.body)["error"]["code"] == "invalid_api_key"


def test_chunked_upload_over_the_limit_is_413_while_streaming(guarded):
    api, server, tmp = guarded
    headers = {**FORM, "Authorization": f"Bearer {api.key}"}
    answer = stream_request(api.base, "POST", "/v1/files", headers, multipart("big.jsonl", zeros(512 * MiB)))
    assert answer.status == 413, answer
    err = json.loads(answer.body)["error"]
    assert err["code"] == "request_too_large" and err["param"] == "file" and str(UPLOAD_LIMIT) in err["message"]
    assert answer.headers.get("connection") == "close"
    assert answer.sent <= UPLOAD_LIMIT + 8 * MiB
    assert spooled(tmp) == 0  # the spooled part is gone with the refused request
    assert api.http.get("/v1/files").json()["data"] == []


def test_job_bodies_have_a_small_limit_with_or_without_content_length(guarded):
    api, _server, _tmp = guarded
    big = json.dumps({"model": "a/b", "training_file": "file-x", "metadata": {"k": "x" * (2 * REQUEST_LIMIT)}}).encode()
    r = api.http.post("/v1/fine_tuning/jobs", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large" and str(REQUEST_LIMIT) in r.text
    headers = {"Authorization": f"Bearer {api.key}", "Content-Type": "application/json"}
    answer = stream_request(api.base, "POST", "/v1/fine_tuning/jobs", headers, zeros(64 * MiB, 16 * 1024))
    assert answer.status == 413 and answer.sent <= 8 * MiB
    assert json.loads(answer.body)["error"]["code"] == "request_too_large"


def test_a_small_upload_still_works_and_ids_are_checked(guarded):
    api, _server, _tmp = guarded
    assert api.upload(b'{"prompt": "p", "completion": "c"}\n').status_code == 200
    assert api.http.get("/v1/files/file-%00x").status_code == 400
    assert api.http.get("/v1/files", params={"after": "x\x00"}).status_code == 400
    assert httpx.post(f"{api.base}/v1/fine_tuning/jobs", json={}).status_code == 401


@pytest.mark.skipif(os.environ.get("TUNEFORGE_TEST_HUGE") is None, reason="sends 1.5 GB with a key; set TUNEFORGE_TEST_HUGE=1")
def test_huge_upload_with_a_key_stays_in_bounds(guarded):  # pragma: no cover - manual
    api, server, tmp = guarded
    headers = {**FORM, "Authorization": f"Bearer {api.key}"}
    assert stream_request(api.base, "POST", "/v1/files", headers, multipart("big.jsonl", zeros(1536 * MiB))).status == 413
