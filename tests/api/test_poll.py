"""The cheap poll path over real HTTP: ETag + If-None-Match -> 304 on retrieve, list, events
and metrics (a change gives a new tag), and job objects rendered from the stored row as it
is. Run data is written through core.services.runs, as the worker writes it."""

from __future__ import annotations

from sqlalchemy.orm import Session

from core.models import Job
from core.services import runs
from core.spec import JobSpec


def revalidate(api, path: str, **params):
    """GET twice: the first answer's tag must bring a bodiless 304 the second time."""
    first = api.http.get(path, params=params)
    assert first.status_code == 200, first.text
    tag = first.headers["etag"]
    assert tag.startswith('"') and first.headers["cache-control"] == "private, no-cache"
    again = api.http.get(path, params=params, headers={"If-None-Match": tag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == tag
    return tag


def status_with(api, path: str, tag: str, **params) -> int:
    return api.http.get(path, params=params, headers={"If-None-Match": tag}).status_code


def test_retrieve_304_until_the_job_changes(api, model_dir):
    jid = api.job(str(model_dir)).json()["id"]
    path = f"/v1/fine_tuning/jobs/{jid}"
    tag = revalidate(api, path)
    # Weak and listed forms match too (RFC 9110 weak comparison), a different tag does not.
    assert status_with(api, path, f'"nope", W/{tag}') == 304
    assert status_with(api, path, "*") == 304
    assert status_with(api, path, '"nope"') == 200
    api.http.post(f"{path}/cancel")
    changed = api.http.get(path, headers={"If-None-Match": tag})
    assert changed.status_code == 200 and changed.json()["status"] == "cancelled" and changed.headers["etag"] != tag


def test_list_304_per_team_and_query_until_a_job_is_added(api, other, model_dir):
    api.job(str(model_dir))
    path = "/v1/fine_tuning/jobs"
    tag = revalidate(api, path, limit=5)
    assert status_with(api, path, tag, limit=4) == 200  # another query, another tag
    assert status_with(other, path, tag, limit=5) == 200  # another team, another tag
    revalidate(other, path, limit=5)  # an empty list is cacheable too
    api.job(str(model_dir))
    assert status_with(api, path, tag, limit=5) == 200


def test_events_and_metrics_304_until_the_runner_writes(api, model_dir, run_as_worker, stack_engine):
    jid = api.job(str(model_dir)).json()["id"]
    claim = run_as_worker(jid)
    with Session(stack_engine) as s:
        for step in range(1, 51):
            runs.record_metrics(s, jid, claim.attempt, step, {"train_loss": 2.0 - step / 100})
        s.commit()
    events, metrics = f"/v1/fine_tuning/jobs/{jid}/events", f"/v1/fine_tuning/jobs/{jid}/metrics"
    ev_tag = revalidate(api, events, limit=5, order="asc")
    m_tag = revalidate(api, metrics, max_points=10)
    assert status_with(api, metrics, m_tag, max_points=11) == 200

    with Session(stack_engine) as s:  # an eval value merged into the newest step: same steps, new body
        runs.record_metrics(s, jid, claim.attempt, 50, {"eval_loss": 1.7})
        s.commit()
    fresh = api.http.get(metrics, params={"max_points": 10}, headers={"If-None-Match": m_tag})
    assert fresh.status_code == 200 and fresh.json()["data"][-1]["values"]["eval_loss"] == 1.7
    assert status_with(api, events, ev_tag, limit=5, order="asc") == 304  # metrics are not events

    with Session(stack_engine) as s:
        runs.record_event(s, jid, claim.attempt, "info", "tokenizing")
        s.commit()
    assert status_with(api, events, ev_tag, limit=5, order="asc") == 200


def test_job_object_renders_the_stored_spec_without_revalidating(api, stack_engine):
    """A row written under older (looser) rules, or before a field existed, still renders:
    stored values as they are, missing ones at their defaults; never a 500."""
    spec = JobSpec(model="org/model", training_file="file-x").model_dump(mode="json")
    spec["hyperparameters"]["learning_rate"] = 5.0  # above today's bound
    spec["lora"]["retired_option"] = True  # a field since removed
    del spec["evaluation"]["max_new_tokens"]  # a field added later
    del spec["validation_split"]
    with Session(stack_engine) as s:
        job = Job(team_id=api.team_id, model="org/model", training_file_id="file-x", spec=spec, spec_hash="h", status="succeeded")
        s.add(job)
        s.commit()
        jid = job.id
    got = api.http.get(f"/v1/fine_tuning/jobs/{jid}")
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["hyperparameters"]["learning_rate"] == 5.0 and body["lora"]["retired_option"] is True
    assert body["evaluation"]["max_new_tokens"] == 128 and body["validation_split"] == 0.0
    assert jid in [j["id"] for j in api.http.get("/v1/fine_tuning/jobs").json()["data"]]
