"""`integrations` on job create, as OpenAI's API takes it: W&B targets accepted and echoed on
the job, other shapes refused naming the field, and a server without the `wandb` package
refusing wandb integrations with a 400 at create (not a failure after the queue)."""

from __future__ import annotations

import pytest

from tests.conftest import free_port, run_api

TEMPLATE = {"prompt": "요약: {document}", "completion": "{summary}"}
WANDB = {"type": "wandb", "wandb": {"project": "news-sum", "name": "run-1", "entity": "lab", "tags": ["kr", "qlora"]}}


def test_sdk_create_records_the_integrations_as_given(api, model_dir):
    job = api.sdk.fine_tuning.jobs.create(
        model=str(model_dir), training_file=api.file_id(), integrations=[WANDB], extra_body={"template": TEMPLATE},
    )
    assert job.integrations[0].wandb.tags == ["kr", "qlora"] and job.integrations[0].wandb.entity == "lab"
    assert api.http.get(f"/v1/fine_tuning/jobs/{job.id}").json()["integrations"] == [WANDB]
    # Fields left out stay out (not null: OpenAI's schema types `tags` as an array).
    bare = api.job(str(model_dir), integrations=[{"type": "wandb", "wandb": {"project": "p"}}])
    assert bare.json()["integrations"] == [{"type": "wandb", "wandb": {"project": "p"}}], bare.text
    plain = api.sdk.fine_tuning.jobs.create(model=str(model_dir), training_file=api.file_id(), extra_body={"template": TEMPLATE})
    assert plain.integrations == []


@pytest.mark.parametrize(
    "integrations,param",
    [
        ([{"type": "mlflow", "mlflow": {"project": "x"}}], "integrations.0.type"),
        ([{"type": "wandb", "wandb": {"name": "no project"}}], "integrations.0.wandb.project"),
        # The W&B key is the worker's: one sent with the job is refused, never stored.
        ([{"type": "wandb", "wandb": {"project": "p", "api_key": "secret"}}], "integrations.0.wandb.api_key"),
        ([{"type": "wandb", "wandb": {"project": "p", "tags": ["x" * 65]}}], "integrations.0.wandb.tags.0"),
        ([{"type": "wandb"}], "integrations.0.wandb"),
    ],
)
def test_bad_integrations_name_the_field(api, model_dir, integrations, param):
    r = api.job(str(model_dir), integrations=integrations)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["param"] == param, r.json()


def test_two_wandb_integrations_are_refused(api, model_dir):
    r = api.job(str(model_dir), integrations=[WANDB, {"type": "wandb", "wandb": {"project": "second"}}])
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "integrations" and "at most one wandb" in err["message"], err


def test_server_without_wandb_refuses_a_wandb_integration(settings_env, make_team, stack_engine, model_dir, tmp_path):
    """A second API process in which `wandb` cannot be found (sys.modules["wandb"] = None, set
    by a sitecustomize on its PYTHONPATH: how Python marks a package absent)."""
    from tests.api.conftest import Api, finish_team_jobs

    (tmp_path / "sitecustomize.py").write_text('import sys\nsys.modules["wandb"] = None\n')
    with run_api({**settings_env, "PYTHONPATH": str(tmp_path)}, free_port()) as base:
        api = Api(base, *make_team())
        r = api.job(str(model_dir), integrations=[WANDB])
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["param"] == "integrations.0.type" and "wandb is not installed" in err["message"], err
        try:
            assert api.job(str(model_dir)).status_code == 200  # the same server takes jobs without it
        finally:
            finish_team_jobs(stack_engine, api.team_id)
