"""The read side of a run: events, checkpoints, metric series, artifacts + signed links,
and the SSE stream. Run data is written through core.services.runs, as the worker does."""

from __future__ import annotations

import hashlib
import json

import httpx
from sqlalchemy.orm import Session

from core.services import runs
from core.states import JobStatus


def test_checkpoints_events_and_metrics(api, model_dir, run_as_worker, stack_engine):
    jid = api.job(str(model_dir)).json()["id"]
    claim = run_as_worker(jid)
    with Session(stack_engine) as s:
        for step in range(0, 1000):
            runs.record_metrics(s, jid, claim.attempt, step, {"train_loss": 5.0 - step / 1000, "total_steps": 999})
        runs.record_checkpoint(s, jid, claim.attempt, 500, f"jobs/{jid}/ckpt-500", {"train_loss": 4.5})
        runs.record_checkpoint(s, jid, claim.attempt, 999, f"jobs/{jid}/ckpt-999", {"train_loss": 4.0})
        s.commit()

    ckpts = api.sdk.fine_tuning.jobs.checkpoints.list(jid)
    assert [c.step_number for c in ckpts.data] == [999, 500]
    assert ckpts.data[0].object == "fine_tuning.job.checkpoint" and ckpts.data[0].fine_tuning_job_id == jid
    assert ckpts.data[0].metrics.train_loss == 4.0 and ckpts.data[0].metrics.step == 999
    page = api.sdk.fine_tuning.jobs.checkpoints.list(jid, limit=1, after=ckpts.data[0].id)
    assert [c.step_number for c in page.data] == [500]

    events = api.sdk.fine_tuning.jobs.list_events(jid, limit=2)
    assert [(e.type, e.data["kind"]) for e in events.data] == [("metrics", "checkpoint")] * 2 and events.has_more is True
    assert events.data[0].data["train_loss"] == 4.0 and events.data[0].data["step"] == 999
    older = api.sdk.fine_tuning.jobs.list_events(jid, limit=100, after=events.data[-1].id)
    assert [e.data["to"] for e in older.data if e.data["kind"] == "status"] == ["running", "queued"]
    asc = api.http.get(f"/v1/fine_tuning/jobs/{jid}/events", params={"order": "asc", "limit": 1}).json()
    assert asc["data"][0]["data"] == {"from": "validating_files", "to": "queued", "kind": "status"}

    series = api.http.get(f"/v1/fine_tuning/jobs/{jid}/metrics", params={"max_points": 10}).json()["data"]
    steps = [p["step"] for p in series]
    assert len(steps) == 10 and steps[0] == 0 and steps[-1] == 999 and steps == sorted(steps)
    window = api.http.get(f"/v1/fine_tuning/jobs/{jid}/metrics", params={"from_step": 100, "to_step": 200, "max_points": 7}).json()["data"]
    assert [p["step"] for p in window][0] == 100 and window[-1]["step"] == 200 and len(window) == 7
    assert api.http.get(f"/v1/fine_tuning/jobs/{jid}/metrics", params={"max_points": 1}).json()["data"][0]["step"] == 999

    job = api.sdk.fine_tuning.jobs.retrieve(jid)
    assert job.status == "running" and job.step == 999 and job.latest_metrics["train_loss"] == 5.0 - 999 / 1000


def test_artifacts_list_signed_link_and_download(api, other, model_dir, run_as_worker, stack_engine, settings):
    from core.storage import get_store

    jid = api.job(str(model_dir)).json()["id"]
    claim = run_as_worker(jid)
    payload = json.dumps({"r": 8}).encode()
    key = f"jobs/{jid}/adapter/adapter_config.json"
    store = get_store(settings)
    store.put_bytes(key, payload)
    with Session(stack_engine) as s:
        runs.record_artifact(s, jid, claim.attempt, "adapter/adapter_config.json", len(payload), hashlib.sha256(payload).hexdigest(), key)
        runs.finish(s, jid, claim.attempt, JobStatus.SUCCEEDED, fine_tuned_model="tiny:news")
        s.commit()

    listing = api.http.get(f"/v1/fine_tuning/jobs/{jid}/artifacts").json()
    assert listing["object"] == "list"
    assert listing["data"] == [{"name": "adapter/adapter_config.json", "bytes": len(payload),
                                "sha256": hashlib.sha256(payload).hexdigest(), "created_at": listing["data"][0]["created_at"]}]
    link = api.http.get(f"/v1/fine_tuning/jobs/{jid}/artifacts/adapter/adapter_config.json").json()
    assert link["expires_at"] > 0
    got = httpx.get(link["url"])  # no API key: the signature is the authorisation
    assert got.status_code == 200 and got.content == payload

    token = link["url"].rsplit("/", 1)[-1]
    tampered = link["url"][: -len(token)] + token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    bad = httpx.get(tampered)
    assert bad.status_code == 403 and bad.json()["error"]["code"] == "invalid_signature"

    assert api.http.get(f"/v1/fine_tuning/jobs/{jid}/artifacts/nope.bin").status_code == 404
    assert other.http.get(f"/v1/fine_tuning/jobs/{jid}/artifacts").status_code == 404


def test_stream_sends_status_and_events_until_terminal(api, model_dir):
    jid = api.job(str(model_dir)).json()["id"]
    api.http.post(f"/v1/fine_tuning/jobs/{jid}/cancel")
    kinds, statuses = [], []
    with api.http.stream("GET", f"/v1/fine_tuning/jobs/{jid}/stream", timeout=20) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        event = None
        for line in r.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
                kinds.append(event)
            elif line.startswith("data:") and event == "status":
                statuses.append(json.loads(line.split(":", 1)[1])["status"])
    assert kinds.count("event") == 2 and statuses == ["cancelled"]
