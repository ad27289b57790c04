"""Upload -> job -> trained adapter, through the official openai SDK against the real API,
a real Celery worker and real training processes on the tiny model."""

from __future__ import annotations

import hashlib

import httpx

from tests.e2e.conftest import training_processes
from tests.jobdata import TEMPLATE, hyperparameters, jsonl, news_rows


def test_job_from_upload_to_downloaded_adapter(client):
    job = client.create_job(max_steps=4)
    assert job.status == "queued" and job.model == str(client.model)
    done = client.wait_terminal(job.id)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model.startswith("ft:tiny-llama:") and done.fine_tuned_model.endswith(f":e2e:{job.id}")
    assert done.trained_tokens and done.trained_tokens > 0

    events = client.sdk.fine_tuning.jobs.list_events(job.id, limit=100).data
    messages = [e.message for e in reversed(events)]
    statuses = [m for m in messages if m.startswith(("Files validated", "Attempt 1 started", "Job succeeded"))]
    assert len(statuses) == 3, messages
    assert any("Phase: training" in m for m in messages) and any("Checkpoint saved" in m for m in messages)

    ckpts = client.sdk.fine_tuning.jobs.checkpoints.list(job.id).data
    assert sorted(c.step_number for c in ckpts) == [2, 4]
    assert all(c.metrics.train_loss is not None for c in ckpts)  # OpenAI's name (the SDK's field)

    series = client.http.get(f"/v1/fine_tuning/jobs/{job.id}/metrics").json()["data"]
    assert [p["step"] for p in series] == [1, 2, 3, 4] and "loss" in series[0]["values"]
    assert "eval_loss" in series[-1]["values"]

    arts = {a["name"]: a for a in client.http.get(f"/v1/fine_tuning/jobs/{job.id}/artifacts").json()["data"]}
    assert {"adapter.tar.gz", "adapter/adapter_model.safetensors", "eval_report.json"} <= set(arts)
    link = client.http.get(f"/v1/fine_tuning/jobs/{job.id}/artifacts/adapter.tar.gz").json()["url"]
    got = httpx.get(link, timeout=30)  # no API key: the signature is the authorisation
    assert got.status_code == 200, got.text
    assert hashlib.sha256(got.content).hexdigest() == arts["adapter.tar.gz"]["sha256"]
    token = link.rsplit("/", 1)[1]
    tampered = link[: -len(token)] + token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    assert httpx.get(tampered, timeout=30).status_code == 403


def test_cancel_running_job_kills_its_training_process(client):
    job = client.create_job(max_steps=10_000, every=10_000)
    client.wait(job.id, lambda j: j.status == "running" and training_processes(job.id), what="a live child")
    pids = training_processes(job.id)
    pool = client.http.get("/v1/workers").json()["data"]
    mine = [w for w in pool if w["id"].endswith(f":{client.worker_pid}")]
    assert mine and mine[0]["active"] and mine[0]["slots"] == 1 and mine[0]["gpus"] == 0
    client.wait(job.id, lambda j: job.id in _running_on_worker(client), timeout=10, what="the worker heartbeat")
    cancelled = client.sdk.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status in ("cancelling", "cancelled")
    done = client.wait_terminal(job.id, timeout=60)
    assert done.status == "cancelled"
    assert training_processes(job.id) == [] and pids


def test_pause_then_resume_finishes_from_checkpoint(client):
    job = client.create_job(max_steps=12, every=1_000, accumulate=8)
    client.wait(job.id, lambda j: j.status == "running" and (_step(client, j.id) or 0) >= 2, what="step 2")
    assert client.sdk.fine_tuning.jobs.pause(job.id).status in ("pausing", "paused")
    paused = client.wait(job.id, lambda j: j.status in ("paused", "failed", "succeeded"), timeout=60, what="paused")
    assert paused.status == "paused"
    ckpts = client.sdk.fine_tuning.jobs.checkpoints.list(job.id).data
    assert len(ckpts) == 1 and ckpts[0].step_number < 12
    assert client.sdk.fine_tuning.jobs.resume(job.id).status == "queued"
    done = client.wait_terminal(job.id)
    assert done.status == "succeeded", done.error
    messages = [e.message for e in client.sdk.fine_tuning.jobs.list_events(job.id, limit=100).data]
    assert f"Resuming from the checkpoint at step {ckpts[0].step_number}" in messages
    assert any(m.startswith("Attempt 2 started") for m in messages)


def _step(client, job_id):
    return client.http.get(f"/v1/fine_tuning/jobs/{job_id}").json().get("step") or _last_metric_step(client, job_id)


def _last_metric_step(client, job_id):
    data = client.http.get(f"/v1/fine_tuning/jobs/{job_id}/metrics").json()["data"]
    return data[-1]["step"] if data else 0


def _running_on_worker(client) -> list[str]:
    pool = client.http.get("/v1/workers").json()["data"]
    return [j for w in pool if w["id"].endswith(f":{client.worker_pid}") for j in w["running_job_ids"]]


def test_dry_run_gets_token_counts_from_the_worker(client):
    f = client.sdk.files.create(file=("news.jsonl", jsonl(news_rows(6))), purpose="fine-tune")
    body = {"model": str(client.model), "training_file": f.id, "template": TEMPLATE,
            "hyperparameters": hyperparameters(4)}
    report = client.http.post("/v1/fine_tuning/jobs/validate", json=body).json()
    assert report["valid"] and report["warnings"] == [], report
    counts = report["token_counts"]
    assert counts["train_rows"] == 6 and counts["train_tokens"]["total_tokens"] > 0
    assert counts["estimated_steps"] == 4
    assert all(j.training_file != f.id for j in client.sdk.fine_tuning.jobs.list().data)  # nothing queued
