"""GET /v1/pool over HTTP: needs a key, and shows another team's jobs only as counts."""

from __future__ import annotations

import httpx


def test_pool_is_team_scoped(live_api, api, other, model_dir):
    job = api.job(str(model_dir), suffix="pooled")
    assert job.status_code == 200, job.text
    job_id = job.json()["id"]

    assert httpx.get(f"{live_api}/v1/pool").status_code == 401

    mine = api.http.get("/v1/pool")
    assert mine.status_code == 200 and mine.json()["object"] == "pool"
    entry = next(q for q in mine.json()["queue"] if q["job_id"] == job_id)
    assert entry["suffix"] == "pooled" and entry["others"] == 0
    me = next(t for t in mine.json()["teams"] if t["mine"])
    assert me["waiting_jobs"] == 1

    theirs = other.http.get("/v1/pool")
    assert theirs.status_code == 200
    assert job_id not in theirs.text and api.team_id not in theirs.text
    body = theirs.json()
    assert all(q["job_id"] is None for q in body["queue"])
    assert sum(q["others"] for q in body["queue"]) == body["waiting_total"] >= 1
