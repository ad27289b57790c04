"""Health, readiness, Prometheus metrics, the worker pool and the OpenAPI docs."""

from __future__ import annotations

import httpx
from sqlalchemy.orm import Session

from core.services.workers import register_worker


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
