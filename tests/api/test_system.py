"""Health, readiness, Prometheus metrics, the worker pool and the OpenAPI docs."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy.orm import Session

from core.services.workers import register_worker, worker_heartbeat


def test_health_ready_metrics_docs(live_api, api, model_dir):
    assert httpx.get(f"{live_api}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{live_api}/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": True, "broker": True}
    api.job(str(model_dir))
    text = httpx.get(f"{live_api}/metrics").text
    assert 'tuneforge_jobs{status="queued"}' in text
    assert 'tuneforge_http_requests_total{method="POST",route="/v1/fine_tuning/jobs",status="200"}' in text
    assert httpx.get(f"{live_api}/docs").status_code == 200
    paths = httpx.get(f"{live_api}/openapi.json").json()["paths"]
    assert "/v1/fine_tuning/jobs/{job_id}/metrics" in paths and "/v1/files" in paths


def test_workers_list(api, stack_engine):
    with Session(stack_engine) as s:
        register_worker(s, "gpu-host:42", "gpu-host", slots=2, gpus=2, gpu_name="H100", gpu_memory_gb=80)
        s.commit()
    data = api.http.get("/v1/workers").json()["data"]
    w = next(w for w in data if w["id"] == "gpu-host:42")
    assert w["gpus"] == 2 and w["gpu_name"] == "H100" and w["active"] is True


def test_unknown_route_is_openai_shaped_404(live_api):
    r = httpx.get(f"{live_api}/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_workers_show_other_teams_jobs_only_as_counts(api, other, model_dir, stack_engine):
    mine = api.job(str(model_dir)).json()["id"]
    theirs = other.job(str(model_dir)).json()["id"]
    with Session(stack_engine) as s:
        register_worker(s, "shared-host:7", "shared-host", slots=2, gpus=2)
        worker_heartbeat(s, "shared-host:7", [mine, theirs])
        s.commit()
    seen = next(w for w in api.http.get("/v1/workers").json()["data"] if w["id"] == "shared-host:7")
    assert seen["running_job_ids"] == [mine] and seen["running_jobs"] == 2
    seen = next(w for w in other.http.get("/v1/workers").json()["data"] if w["id"] == "shared-host:7")
    assert seen["running_job_ids"] == [theirs] and seen["running_jobs"] == 2


def test_metrics_behind_a_token(settings):
    from fastapi.testclient import TestClient

    from api.app import create_app

    with TestClient(create_app(settings.model_copy(update={"metrics_token": "scrape-" + "t" * 24}))) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = client.get("/metrics", headers={"Authorization": "Bearer scrape-" + "t" * 24})
        assert ok.status_code == 200 and "tuneforge_http_requests_total" in ok.text


def test_metrics_on_a_port_of_their_own(settings):
    from fastapi.testclient import TestClient

    from api.app import create_app
    from tests.conftest import free_port

    port = free_port()
    with TestClient(create_app(settings.model_copy(update={"metrics_port": port, "metrics_host": "127.0.0.1"}))) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/metrics").status_code == 404  # not on the API port
        scraped = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert scraped.status_code == 200 and 'tuneforge_http_requests_total{method="GET",route="/healthz",status="200"}' in scraped.text
    with pytest.raises(httpx.HTTPError):  # stopped with the app
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
