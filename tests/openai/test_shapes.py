"""Every response body of files, jobs, events, checkpoints and lists against OpenAI's
published schemas (tests/openai/openapi_schemas.py), on real run data written the way the
worker writes it; and the SDK reading the values OpenAI's names promise."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from core.services import runs
from core.states import JobStatus
from tests.openai.openapi_schemas import assert_matches, problems

#: Statuses tuneforge adds to OpenAI's six (documented extensions in docs/openai-migration.md).
EXTENSION_STATUSES = {"pausing", "paused", "cancelling"}


def _job_matches(body: dict) -> None:
    if body["status"] in EXTENSION_STATUSES:
        assert problems("FineTuningJob", body) and not problems("FineTuningJob", {**body, "status": "running"})
    else:
        assert_matches("FineTuningJob", body)


def _run_with_checkpoints(api, run_as_worker, model_dir, stack_engine) -> str:
    """A job that ran two steps and saved a checkpoint with the trainer's metric names."""
    jid = api.job(str(model_dir), metadata={"team": "news"}).json()["id"]
    claim = run_as_worker(jid)
    with Session(stack_engine) as s:
        runs.record_phase(s, jid, claim.attempt, "training")
        runs.record_metrics(s, jid, claim.attempt, 1, {"loss": 2.5, "token_accuracy": 0.25, "step": 1, "total_steps": 2})
        runs.record_checkpoint(
            s, jid, claim.attempt, 2, f"jobs/{jid}/ckpt-2",
            {"loss": 2.0, "token_accuracy": 0.5, "learning_rate": 1e-4, "step": 2, "total_steps": 2},
        )
        runs.record_metrics(s, jid, claim.attempt, 2, {"eval_loss": 2.25, "eval_token_accuracy": 0.375})
        runs.record_checkpoint(
            s, jid, claim.attempt, 3, f"jobs/{jid}/ckpt-3", {"eval_loss": 2.25, "eval_token_accuracy": 0.375, "step": 3}
        )
        runs.record_event(s, jid, claim.attempt, "info", "Dataset report", {"rows": 3})
        runs.finish(s, jid, claim.attempt, JobStatus.SUCCEEDED, fine_tuned_model=f"ft:tiny:team::{jid}")
        s.commit()
    return jid


def test_every_object_and_list_matches_openais_schemas(api, make_api, run_as_worker, model_dir, stack_engine):
    jid = _run_with_checkpoints(api, run_as_worker, model_dir, stack_engine)
    http = api.http
    files = http.get("/v1/files").json()
    assert files["data"]
    assert_matches("ListFilesResponse", files)
    for f in files["data"]:
        assert_matches("OpenAIFile", http.get(f"/v1/files/{f['id']}").json())
        assert "expires_at" not in f and "status_details" not in f  # never null: OpenAI types them integer / string

    job = http.get(f"/v1/fine_tuning/jobs/{jid}").json()
    _job_matches(job)
    jobs = http.get("/v1/fine_tuning/jobs").json()
    assert_matches("ListPaginatedFineTuningJobsResponse", jobs)
    for j in jobs["data"]:
        _job_matches(j)

    events = http.get(f"/v1/fine_tuning/jobs/{jid}/events", params={"limit": 100}).json()
    assert_matches("ListFineTuningJobEventsResponse", events)
    assert {e["type"] for e in events["data"]} == {"message", "metrics"}
    assert {e["data"]["kind"] for e in events["data"]} >= {"status", "phase", "checkpoint"}

    ckpts = http.get(f"/v1/fine_tuning/jobs/{jid}/checkpoints").json()
    assert_matches("ListFineTuningJobCheckpointsResponse", ckpts)
    assert [c["step_number"] for c in ckpts["data"]] == [3, 2]

    # The empty lists: OpenAI's files list requires string first_id / last_id.
    fresh = make_api()
    for path, schema in [
        ("/v1/files", "ListFilesResponse"),
        ("/v1/fine_tuning/jobs", "ListPaginatedFineTuningJobsResponse"),
    ]:
        empty = fresh.http.get(path).json()
        assert empty["data"] == [] and empty["first_id"] == "" and empty["last_id"] == ""
        assert_matches(schema, empty)

    deleted = http.delete(f"/v1/files/{api.file_id()}")
    assert deleted.status_code == 200, deleted.text
    assert_matches("DeleteFileResponse", deleted.json())


def test_failed_and_paused_jobs_keep_openais_types(api, run_as_worker, model_dir, stack_engine):
    failed = api.job(str(model_dir)).json()["id"]
    paused = api.job(str(model_dir)).json()["id"]
    with Session(stack_engine) as s:
        c = runs.claim_job(s, failed, "w:1", 60)
        runs.finish(s, failed, c.attempt, JobStatus.FAILED, error={"code": "oom", "message": "out of memory"})
        s.commit()
    claim = run_as_worker(paused)
    with Session(stack_engine) as s:
        runs.finish(s, paused, claim.attempt, JobStatus.PAUSED)
        s.commit()
    body = api.http.get(f"/v1/fine_tuning/jobs/{failed}").json()
    assert body["error"] == {"code": "oom", "message": "out of memory", "param": None}
    _job_matches(body)
    body = api.http.get(f"/v1/fine_tuning/jobs/{paused}").json()
    assert body["status"] == "paused"
    _job_matches(body)


def test_sdk_reads_checkpoint_and_event_metrics_under_openais_names(api, run_as_worker, model_dir, stack_engine):
    jid = _run_with_checkpoints(api, run_as_worker, model_dir, stack_engine)
    newest, older = api.sdk.fine_tuning.jobs.checkpoints.list(jid).data
    assert older.metrics.train_loss == 2.0 and older.metrics.train_mean_token_accuracy == 0.5 and older.metrics.step == 2
    assert older.fine_tuned_model_checkpoint == f"ft:tiny:team::{jid}:ckpt-step-2"
    assert newest.metrics.valid_loss == newest.metrics.full_valid_loss == 2.25
    assert newest.metrics.valid_mean_token_accuracy == newest.metrics.full_valid_mean_token_accuracy == 0.375
    assert newest.metrics.train_loss is None
    assert "loss" not in older.metrics.model_dump() and older.metrics.model_dump()["learning_rate"] == 1e-4

    metrics = [e for e in api.sdk.fine_tuning.jobs.list_events(jid, limit=100).data if e.type == "metrics"]
    assert [e.data["step"] for e in metrics] == [3, 2]
    assert metrics[1].data == {
        "kind": "checkpoint", "step": 2, "total_steps": 2, "train_loss": 2.0, "train_mean_token_accuracy": 0.5, "learning_rate": 1e-4,
    }
    messages = [e for e in api.sdk.fine_tuning.jobs.list_events(jid, limit=100).data if e.type == "message"]
    assert all(isinstance(e.data, dict) for e in messages)
    assert next(e for e in messages if e.message == "Dataset report").data == {"rows": 3, "kind": "message"}


@pytest.mark.parametrize("path", ["/v1/files", "/v1/fine_tuning/jobs", "{job}/events", "{job}/checkpoints", "/v1/webhooks"])
def test_an_unknown_after_cursor_is_refused_on_every_list(api, model_dir, path):
    jid = api.job(str(model_dir)).json()["id"]
    url = path.format(job=f"/v1/fine_tuning/jobs/{jid}")
    for after in ("file-nope", "ftevent-99999999", "ftjob-00000000000000000000000000", "x"):
        r = api.http.get(url, params={"after": after})
        assert r.status_code == 400, (url, after, r.text)
        err = r.json()["error"]
        assert err["param"] == "after" and after in err["message"], err


def test_a_cursor_of_another_team_is_unknown(api, other, model_dir):
    mine = api.job(str(model_dir)).json()["id"]
    other.job(str(model_dir))
    r = other.http.get("/v1/fine_tuning/jobs", params={"after": mine})
    assert r.status_code == 400 and r.json()["error"]["param"] == "after"


def test_metadata_filters_the_job_list(api, model_dir):
    a = api.job(str(model_dir), metadata={"team": "news", "run": "1"}).json()["id"]
    b = api.job(str(model_dir), metadata={"team": "news", "run": "2"}).json()["id"]
    c = api.job(str(model_dir), metadata={"team": "sports"}).json()["id"]
    api.job(str(model_dir))

    def ids(**params) -> list[str]:
        r = api.http.get("/v1/fine_tuning/jobs", params=params)
        assert r.status_code == 200, r.text
        return [j["id"] for j in r.json()["data"]]

    assert ids(**{"metadata[team]": "news"}) == [b, a]
    assert ids(**{"metadata[team]": "news", "metadata[run]": "1"}) == [a]
    assert ids(**{"metadata[team]": "sports"}) == [c]
    assert ids(**{"metadata[team]": "nobody"}) == []
    assert ids(**{"metadata[team]": "news", "limit": 1, "after": b}) == [a]
    # The SDK sends the same query from extra_query.
    page = api.sdk.fine_tuning.jobs.list(extra_query={"metadata[team]": "sports"})
    assert [j.id for j in page.data] == [c]


@pytest.mark.parametrize(
    "metadata,needle",
    [
        ({f"k{i}": "v" for i in range(17)}, "16"),
        ({"k" * 65: "v"}, "64"),
        ({"k": "v" * 513}, "512"),
    ],
)
def test_metadata_limits_are_openais(api, model_dir, metadata, needle):
    r = api.job(str(model_dir), metadata=metadata)
    assert r.status_code == 422 and r.json()["error"]["param"].startswith("metadata") and needle in r.json()["error"]["message"], r.text


@pytest.mark.parametrize(
    "hp,param,needle",
    [
        ({"n_epochs": 0}, "n_epochs", 'must be "auto" or an integer from 1 to 50, got 0'),
        ({"n_epochs": 51}, "n_epochs", "an integer from 1 to 50, got 51"),
        ({"n_epochs": 2.5}, "n_epochs", "an integer from 1 to 50, got 2.5"),
        ({"n_epochs": "many"}, "n_epochs", "got 'many'"),
        ({"batch_size": 0}, "batch_size", 'must be "auto" or an integer from 1 to 256, got 0'),
        ({"batch_size": 257}, "batch_size", "an integer from 1 to 256, got 257"),
        ({"learning_rate_multiplier": 0}, "learning_rate_multiplier", 'must be "auto" or a number above 0'),
        ({"learning_rate_multiplier": -1}, "learning_rate_multiplier", "got -1"),
        ({"learning_rate_multiplier": "fast"}, "learning_rate_multiplier", "got 'fast'"),
    ],
)
@pytest.mark.parametrize("where", ["top", "method"])
def test_hyperparameter_bounds_are_openais_with_plain_messages(api, model_dir, hp, param, needle, where):
    body = {"hyperparameters": hp} if where == "top" else {"method": {"type": "supervised", "supervised": {"hyperparameters": hp}}}
    r = api.job(str(model_dir), **body)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["param"].endswith(f"hyperparameters.{param}") and needle in err["message"], err
    assert "more problem" not in err["message"] and "Input should be" not in err["message"]


def test_openais_largest_values_and_auto_are_accepted_and_recorded(api, model_dir):
    job = api.sdk.fine_tuning.jobs.create(
        model=str(model_dir), training_file=api.file_id(),
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 50, "batch_size": 256, "learning_rate_multiplier": 0.01}}},
        extra_body={"template": {"prompt": "요약: {document}", "completion": "{summary}"}},
    )
    assert (job.hyperparameters.n_epochs, job.hyperparameters.batch_size) == (50, 256)
    auto = api.sdk.fine_tuning.jobs.create(
        model=str(model_dir), training_file=api.file_id(),
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"}}},
        extra_body={"template": {"prompt": "요약: {document}", "completion": "{summary}"}},
    )
    # "auto" resolves to the stated defaults, recorded on the job in both places OpenAI shows them.
    for hp in (auto.hyperparameters, auto.method.supervised.hyperparameters):
        assert (hp.n_epochs, hp.batch_size, hp.learning_rate_multiplier) == (3, 4, 1.0)
    body = api.http.get(f"/v1/fine_tuning/jobs/{auto.id}").json()
    assert_matches("FineTuningJob", body)


def test_hyperparameters_in_both_places_is_a_400_naming_the_conflict(api, model_dir):
    r = api.job(
        str(model_dir), hyperparameters={"n_epochs": 2},
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}},
    )
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "hyperparameters" and "both" in err["message"] and "method.supervised.hyperparameters" in err["message"]
    # The deprecated place alone, and method alone without hyperparameters, are fine.
    assert api.job(str(model_dir), hyperparameters={"n_epochs": 2}, method={"type": "supervised"}).status_code == 200


def test_reinforcement_is_not_supported_by_this_server(api, model_dir):
    r = api.job(str(model_dir), method={"type": "reinforcement", "reinforcement": {"grader": {"type": "string_check"}}})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "method.type" and "not supported by this server" in err["message"]
    assert api.http.post("/v1/fine_tuning/jobs/validate", json={
        "model": str(model_dir), "training_file": api.file_id(), "method": {"type": "reinforcement"},
        "template": {"prompt": "{document}", "completion": "{summary}"},
    }).status_code == 400


@pytest.mark.parametrize("suffix", ["news", "my model/v2: ü 요약!", "x" * 64, "a:b"])
def test_any_suffix_of_1_to_64_characters_is_accepted_and_made_safe(api, model_dir, suffix):
    from worker.runner import fine_tuned_model_name

    r = api.job(str(model_dir), suffix=suffix)
    assert r.status_code == 200, r.text
    assert r.json()["suffix"] == r.json()["user_provided_suffix"] == suffix
    name = fine_tuned_model_name(str(model_dir), "team", suffix, "ftjob-1")
    assert name.count(":") == 4 and name.startswith("ft:tiny-llama:team:") and name.endswith(":ftjob-1")


@pytest.mark.parametrize("suffix", ["", "x" * 65])
def test_a_suffix_outside_1_to_64_characters_is_refused(api, model_dir, suffix):
    r = api.job(str(model_dir), suffix=suffix)
    assert r.status_code == 422 and r.json()["error"]["param"] == "suffix", r.text


def test_job_request_bodies_we_accept_are_openais(api, model_dir):
    """The bodies the tests above send (OpenAI's fields) are valid OpenAI requests too."""
    body = {
        "model": "gpt-4o-mini", "training_file": "file-1", "suffix": "my model/v2: ü",
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 50, "batch_size": 256, "learning_rate_multiplier": 0.01}}},
        "metadata": {"team": "news"},
    }
    assert_matches("CreateFineTuningJobRequest", body)
    assert problems("CreateFineTuningJobRequest", {**body, "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 51}}}})


def test_expires_after_sets_expires_at_and_the_sweep_deletes_expired_files(api, model_dir, stack_engine, settings):
    from datetime import timedelta

    from core.models import File
    from core.services.retention import collect_garbage
    from core.storage import get_store
    from tests.api.conftest import jsonl
    from tests.jobdata import news_rows

    data = jsonl(news_rows(4))
    f = api.sdk.files.create(file=("t.jsonl", data), purpose="fine-tune", expires_after={"anchor": "created_at", "seconds": 3600})
    assert f.expires_at == f.created_at + 3600
    assert_matches("OpenAIFile", api.http.get(f"/v1/files/{f.id}").json())
    used = api.sdk.files.create(file=("u.jsonl", data), purpose="fine-tune", expires_after={"anchor": "created_at", "seconds": 3600})
    job = api.job(str(model_dir), training_file=used.id)
    assert job.status_code == 200, job.text
    keep = api.file_id()

    store = get_store(settings)
    with Session(stack_engine) as s:  # an hour later
        for fid in (f.id, used.id):
            row = s.get(File, fid)
            row.expires_at = row.created_at - timedelta(seconds=1)
        s.commit()
        keys = {fid: s.get(File, fid).storage_key for fid in (f.id, used.id)}
    # Gone for the API at once, whatever the sweep has done.
    assert api.http.get(f"/v1/files/{f.id}").status_code == 404
    listed = [x["id"] for x in api.http.get("/v1/files").json()["data"]]
    assert f.id not in listed and keep in listed
    assert api.job(str(model_dir), training_file=f.id).status_code == 404

    report = collect_garbage(stack_engine, store, None, dry_run=False, scan_store=False)
    assert keys[f.id] in report.expired_files and keys[used.id] not in report.expired_files  # its job has not finished
    assert not store.exists(keys[f.id]) and store.exists(keys[used.id])
    with Session(stack_engine) as s:
        assert s.get(File, f.id).deleted_at is not None and s.get(File, used.id).deleted_at is None


@pytest.mark.parametrize(
    "form,param",
    [
        ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "60"}, "expires_after.seconds"),
        ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "2592001"}, "expires_after.seconds"),
        ({"expires_after[anchor]": "last_active_at", "expires_after[seconds]": "3600"}, "expires_after.anchor"),
        ({"expires_after[seconds]": "3600"}, "expires_after.anchor"),
    ],
)
def test_bad_expires_after_is_a_400_naming_it(api, form, param):
    from tests.api.conftest import jsonl
    from tests.jobdata import news_rows

    r = api.http.post("/v1/files", files={"file": ("t.jsonl", jsonl(news_rows(2)))}, data={"purpose": "fine-tune", **form})
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
