"""/v1/fine_tuning/jobs through the openai SDK and raw HTTP. No worker runs here: a job
must be `queued` in SQL and NOT on the broker: only the workers' scheduler dispatches
(the broker only ever holds jobs that were given to a worker)."""

from __future__ import annotations

import openai
import pytest

from core.tasks import DRY_RUN, RUN_JOB
from tests.api.conftest import queued_messages

TEMPLATE = {"prompt": "요약: {document}", "completion": "{summary}"}


@pytest.fixture
def messages(redis_client, queue_name):
    return lambda: queued_messages(redis_client, queue_name)


def run_job_messages(messages, job_id):
    return [m for m in messages() if m["task"] == RUN_JOB and m["args"] == [job_id]]


def test_sdk_create_with_hyperparameters_queues_and_dispatches(api, model_dir, messages):
    fid = api.file_id()
    job = api.sdk.fine_tuning.jobs.create(
        model=str(model_dir), training_file=fid, suffix="news", seed=7, metadata={"run": "a"},
        hyperparameters={"n_epochs": 2, "batch_size": "auto", "learning_rate_multiplier": 0.5},
        extra_body={"template": TEMPLATE, "lora": {"r": 8, "alpha": 16}, "priority": 3,
                    "quantization": {"bits": 4}, "evaluation": {"generation_samples": 2}, "resources": {"gpus": 0}},
    )
    assert job.object == "fine_tuning.job" and job.status == "queued"
    assert job.training_file == fid and job.model == str(model_dir) and job.organization_id == api.team_id
    assert job.hyperparameters.n_epochs == 2 and job.hyperparameters.batch_size == 4
    assert job.hyperparameters.learning_rate_multiplier == 0.5
    assert job.seed == 7 and job.suffix == "news" and job.metadata == {"run": "a"}
    assert job.lora["r"] == 8 and job.priority == 3 and job.template["prompt"] == TEMPLATE["prompt"]
    assert job.resources["gpus"] == 0
    assert run_job_messages(messages, job.id) == []

    again = api.sdk.fine_tuning.jobs.retrieve(job.id)
    # Position and reason are written by the workers' planner (none runs here): until its
    # first tick the job says it waits for it (tests/scheduling/test_planner.py covers the rest).
    assert again.status == "queued" and again.queue_position is None
    assert again.queue_reason == "waiting for the scheduler"
    statuses = [e.data for e in api.sdk.fine_tuning.jobs.list_events(job.id) if e.data["kind"] == "status"]
    assert statuses == [{"from": "validating_files", "to": "queued", "kind": "status"}]


def test_sdk_create_with_method_supervised(api, model_dir):
    job = api.sdk.fine_tuning.jobs.create(
        model=str(model_dir), training_file=api.file_id(),
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 2}}},
        extra_body={"template": TEMPLATE},
    )
    assert job.hyperparameters.n_epochs == 1 and job.hyperparameters.batch_size == 2
    assert job.method.type == "supervised"


def test_extension_hyperparameters_and_unknown_keys(api, model_dir):
    r = api.job(str(model_dir), hyperparameters={"learning_rate": 1e-4, "max_steps": 5, "max_seq_length": 256})
    assert r.status_code == 200, r.text
    hp = r.json()["hyperparameters"]
    assert hp["learning_rate"] == 1e-4 and hp["max_steps"] == 5 and hp["learning_rate_multiplier"] == pytest.approx(0.5)

    r = api.job(str(model_dir), hyperparameters={"learning_rte": 1e-4})
    assert r.status_code == 422 and r.json()["error"]["param"] == "hyperparameters.learning_rte"


def test_list_paginates_newest_first(api, model_dir):
    ids = [api.job(str(model_dir)).json()["id"] for _ in range(3)]
    first = api.sdk.fine_tuning.jobs.list(limit=2)
    assert [j.id for j in first.data] == ids[::-1][:2] and first.has_more is True
    second = api.sdk.fine_tuning.jobs.list(limit=2, after=first.data[-1].id)
    assert [j.id for j in second.data] == [ids[0]] and second.has_more is False
    assert [j.id for j in api.sdk.fine_tuning.jobs.list(limit=2)] == ids[::-1]  # auto-paging follows `after`


def test_cancel_pause_resume_transitions(api, model_dir, messages, run_as_worker):
    queued = api.job(str(model_dir)).json()["id"]
    assert api.http.post(f"/v1/fine_tuning/jobs/{queued}/pause").json()["status"] == "paused"
    r = api.http.post(f"/v1/fine_tuning/jobs/{queued}/resume")
    assert r.json()["status"] == "queued"
    assert run_job_messages(messages, queued) == []  # neither create nor resume sends it
    assert api.sdk.fine_tuning.jobs.cancel(queued).status == "cancelled"

    r = api.http.post(f"/v1/fine_tuning/jobs/{queued}/resume")
    assert r.status_code == 409 and r.json()["error"]["code"] == "invalid_state"
    with pytest.raises(openai.ConflictError):
        api.sdk.fine_tuning.jobs.pause(queued)

    running = api.job(str(model_dir)).json()["id"]
    run_as_worker(running)
    assert api.sdk.fine_tuning.jobs.pause(running).status == "pausing"
    assert api.sdk.fine_tuning.jobs.cancel(running).status == "cancelling"
    assert api.sdk.fine_tuning.jobs.cancel(running).status == "cancelling"  # asking twice is fine
    assert api.http.post(f"/v1/fine_tuning/jobs/{running}/resume").status_code == 409


@pytest.mark.parametrize(
    "change,status,param,needle",
    [
        ({"model": "/etc"}, 400, "model", "model root"),
        ({"model": "not a hub id"}, 400, "model", "hub id"),
        ({"template": {"prompt": "{article}", "completion": "{summary}"}}, 400, "template.prompt", "'article'"),
        ({"template": None}, 400, "template.prompt", "template.prompt"),
        ({"trust_remote_code": True}, 400, "trust_remote_code", "trust_remote_code"),
        ({"hyperparameters": {"learning_rate": -1}}, 422, "hyperparameters.learning_rate", "greater than 0"),
        ({"hyperparameters": {"n_epochs": "many"}}, 422, "hyperparameters.n_epochs", 'must be "auto" or an integer from 1 to 50'),
        ({"training_file": "file-does-not-exist"}, 404, "training_file", "file-does-not-exist"),
        ({"validation_file": "file-nope"}, 404, "validation_file", "file-nope"),
        ({"training_file": "hf://datasets/owner/name"}, 400, "training_file", "hub datasets"),
        ({"template": {"prompt": "{x.__class__}", "completion": "{summary}"}}, 422, "template.prompt", "not allowed"),
        ({"method": {"type": "foo"}}, 422, "method.type", ""),
    ],
)
def test_bad_specs_name_the_field(api, model_dir, change, status, param, needle):
    body = {"model": str(model_dir), "training_file": api.file_id(), "template": TEMPLATE, **change}
    if body["template"] is None:
        del body["template"]
    r = api.http.post("/v1/fine_tuning/jobs", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and needle in err["message"], err
    assert set(err) == {"message", "type", "param", "code"}


def test_model_path_escaping_the_root_is_refused(api, model_dir, stack_dir):
    link = model_dir.parent / "sneaky"
    if not link.exists():
        link.symlink_to(stack_dir / "artifacts")
    for model in (str(link), str(model_dir / ".." / ".." / "artifacts")):
        r = api.job(model)
        assert r.status_code == 400 and r.json()["error"]["param"] == "model", model


def test_foreign_training_file_is_not_found(api, other, model_dir):
    r = other.job(str(model_dir), training_file=api.file_id())
    assert r.status_code == 404 and r.json()["error"]["param"] == "training_file"


def test_other_teams_jobs_are_not_found(api, other, model_dir):
    jid = api.job(str(model_dir)).json()["id"]
    for method, path in [
        ("GET", ""), ("POST", "/cancel"), ("POST", "/pause"), ("POST", "/resume"), ("GET", "/events"),
        ("GET", "/checkpoints"), ("GET", "/metrics"), ("GET", "/artifacts"), ("GET", "/artifacts/adapter/adapter_config.json"),
        ("GET", "/stream"),
    ]:
        r = other.http.request(method, f"/v1/fine_tuning/jobs/{jid}{path}")
        assert r.status_code == 404, (path, r.text)
    assert other.http.get("/v1/fine_tuning/jobs").json()["data"] == []
    assert api.http.get(f"/v1/fine_tuning/jobs/{jid}").json()["status"] == "queued"


def test_idempotency_key_returns_the_same_job(api, model_dir, messages):
    body = {"model": str(model_dir), "training_file": api.file_id(), "template": TEMPLATE}
    headers = {"Idempotency-Key": "retry-me-1"}
    before = len(api.http.get("/v1/fine_tuning/jobs", params={"limit": 100}).json()["data"])
    a = api.http.post("/v1/fine_tuning/jobs", json=body, headers=headers).json()
    b = api.http.post("/v1/fine_tuning/jobs", json=body, headers=headers).json()
    assert a["id"] == b["id"]
    assert len(api.http.get("/v1/fine_tuning/jobs", params={"limit": 100}).json()["data"]) == before + 1
    r = api.http.post("/v1/fine_tuning/jobs", json={**body, "seed": 1}, headers=headers)
    assert r.status_code == 409 and r.json()["error"]["param"] == "Idempotency-Key"


def test_queued_job_quota(make_api, model_dir):
    api = make_api(max_queued_jobs=1)
    assert api.job(str(model_dir)).status_code == 200
    r = api.job(str(model_dir))
    assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"


def test_dry_run_without_worker_queues_nothing(api, model_dir, messages):
    before = len(api.http.get("/v1/fine_tuning/jobs").json()["data"])
    r = api.http.post("/v1/fine_tuning/jobs/validate",
                      json={"model": str(model_dir), "training_file": api.file_id(), "template": TEMPLATE})
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["valid"] is True and report["token_counts"] is None and "no worker" in report["warnings"][0]
    assert report["spec"]["template"]["prompt"] == TEMPLATE["prompt"]
    assert len(api.http.get("/v1/fine_tuning/jobs").json()["data"]) == before
    assert not [m for m in messages() if m["task"] == RUN_JOB and m["kwargs"].get("team_id") == api.team_id]
    dry = [m for m in messages() if m["task"] == DRY_RUN and m["kwargs"].get("team_id") == api.team_id]
    assert len(dry) == 1 and dry[0]["args"][0]["training_file"] == report["spec"]["training_file"]

    r = api.http.post("/v1/fine_tuning/jobs/validate", json={"model": "/nope", "training_file": api.file_id()})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"


def test_missing_or_wrong_key_is_401_in_openai_shape(live_api):
    import httpx

    r = httpx.get(f"{live_api}/v1/fine_tuning/jobs")
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    client = openai.OpenAI(base_url=f"{live_api}/v1", api_key="tf-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.fine_tuning.jobs.list()
