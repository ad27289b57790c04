"""A DPO job through the official openai SDK: OpenAI's preference file format uploaded and
checked row by row, `method={"type": "dpo", ...}` on the tiny model through the real API,
Celery worker and training process, with DPO's metrics, checkpoints and evaluation."""

from __future__ import annotations

import json

import openai
import pytest

from tests.jobdata import jsonl, news_rows
from tests.training.conftest import PAIRS


def preference_rows() -> list[dict]:
    return [
        {
            "input": {"messages": [{"role": "user", "content": f"{a}의 뜻은?"}]},
            "preferred_output": [{"role": "assistant", "content": b}],
            "non_preferred_output": [{"role": "assistant", "content": PAIRS[(i + 1) % len(PAIRS)][1]}],
        }
        for i, (a, b) in enumerate(PAIRS)
    ]


def test_dpo_job_end_to_end_with_the_sdk(client):
    f = client.sdk.files.create(file=("prefs.jsonl", jsonl(preference_rows())), purpose="fine-tune")
    job = client.sdk.fine_tuning.jobs.create(
        model=str(client.model),
        training_file=f.id,
        validation_file=f.id,
        suffix="dpo",
        method={
            "type": "dpo",
            "dpo": {"hyperparameters": {"beta": 0.1, "n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 50}},
        },
        extra_body={"lora": {"dropout": 0.0}, "evaluation": {"generation_samples": 1}},
    )
    assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 0.1
    done = client.wait_terminal(job.id)
    assert done.status == "succeeded", done.error
    assert done.method.type == "dpo" and done.method.dpo.hyperparameters.n_epochs == 2

    series = client.http.get(f"/v1/fine_tuning/jobs/{job.id}/metrics").json()["data"]
    train = [p for p in series if "loss" in p["values"]]
    assert [p["step"] for p in train] == [1, 2, 3, 4]
    for key in ("rewards_chosen", "rewards_rejected", "rewards_margin", "reward_accuracy"):
        assert key in train[-1]["values"], key
    assert "eval_preference_accuracy" in series[-1]["values"]

    ckpts = client.sdk.fine_tuning.jobs.checkpoints.list(job.id).data
    assert ckpts and max(c.step_number for c in ckpts) == 4

    arts = {a["name"] for a in client.http.get(f"/v1/fine_tuning/jobs/{job.id}/artifacts").json()["data"]}
    assert {"adapter.tar.gz", "eval_report.json"} <= arts
    link = client.http.get(f"/v1/fine_tuning/jobs/{job.id}/artifacts/eval_report.json").json()["url"]
    import httpx

    report = json.loads(httpx.get(link, timeout=30).content)
    assert report["method"] == "dpo" and report["num_eval_rows"] == len(PAIRS)
    assert {"preference_accuracy"} <= set(report["metrics"]) & set(report["base_metrics"])


def test_preference_file_is_checked_at_upload_naming_the_row(client):
    rows = preference_rows()
    rows[2]["non_preferred_output"] = [{"role": "user", "content": "x"}]
    with pytest.raises(openai.BadRequestError, match=r"row 2: 'non_preferred_output' must be a list of exactly one assistant"):
        client.sdk.files.create(file=("bad.jsonl", jsonl(rows)), purpose="fine-tune")
    rows = preference_rows()
    rows[5]["input"]["messages"].append({"role": "assistant", "content": "?"})
    with pytest.raises(openai.BadRequestError, match=r"row 5: the last message of input.messages must be the user's"):
        client.sdk.files.create(file=("bad.jsonl", jsonl(rows)), purpose="fine-tune")


def test_method_and_file_must_agree(client):
    prefs = client.sdk.files.create(file=("prefs.jsonl", jsonl(preference_rows())), purpose="fine-tune")
    sft = client.sdk.files.create(file=("sft.jsonl", jsonl(news_rows(2))), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError, match="method 'dpo' needs preference rows") as e:
        client.sdk.fine_tuning.jobs.create(model=str(client.model), training_file=sft.id, method={"type": "dpo"})
    assert e.value.body["param"] == "training_file"
    with pytest.raises(openai.BadRequestError, match="holds preference pairs") as e:
        client.sdk.fine_tuning.jobs.create(model=str(client.model), training_file=prefs.id)
    assert e.value.body["param"] == "training_file"
    # (the request validator's 4xx for an out-of-range number, naming the field)
    with pytest.raises((openai.BadRequestError, openai.UnprocessableEntityError), match=r"method\.dpo\.hyperparameters\.beta"):
        client.sdk.fine_tuning.jobs.create(
            model=str(client.model), training_file=prefs.id, method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0}}}
        )


def test_dpo_dry_run_counts_pairs(client):
    f = client.sdk.files.create(file=("prefs.jsonl", jsonl(preference_rows())), purpose="fine-tune")
    body = {"model": str(client.model), "training_file": f.id, "method": {"type": "dpo"}}
    report = client.http.post("/v1/fine_tuning/jobs/validate", json=body).json()
    assert report["valid"], report
    assert report["token_counts"]["train_rows"] == len(PAIRS) and report["token_counts"]["method"] == "dpo"


def test_dpo_from_a_supervised_job_and_from_its_checkpoint(client):
    """`from_checkpoint` (an extension, as Together offers): DPO on top of a supervised
    fine-tune, named by its job id (the final adapter) or by one of its checkpoints."""
    sft = client.create_job(max_steps=2, every=1)
    prefs = client.sdk.files.create(file=("prefs.jsonl", jsonl(preference_rows())), purpose="fine-tune")
    dpo = {"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}}
    with pytest.raises(openai.BadRequestError, match=f"from_checkpoint: job {sft.id} is (queued|running)") as e:
        client.sdk.fine_tuning.jobs.create(
            model=str(client.model), training_file=prefs.id, method=dpo, extra_body={"from_checkpoint": sft.id}
        )
    assert e.value.body["param"] == "from_checkpoint"
    assert client.wait_terminal(sft.id).status == "succeeded"
    ckpt = client.sdk.fine_tuning.jobs.checkpoints.list(sft.id).data[-1]
    jobs = [
        client.sdk.fine_tuning.jobs.create(
            model=str(client.model), training_file=prefs.id, validation_file=prefs.id, method=dpo,
            extra_body={"from_checkpoint": ref},
        )
        for ref in (sft.id, ckpt.id)
    ]
    for job in jobs:
        done = client.wait_terminal(job.id)
        assert done.status == "succeeded", done.error
        first = client.http.get(f"/v1/fine_tuning/jobs/{job.id}/metrics").json()["data"][0]["values"]
        # The reference is the adapter the job started from: the first step's loss is log 2 (test_dpo.py
        # shows the same from a start that already prefers the pairs, where a base reference could not).
        assert first["loss"] == pytest.approx(0.6931, abs=1e-3)
    for bad, why in (("ftjob-nope", "no fine-tuning job"), ("ftckpt-nope", "no checkpoint"), ("x", "expected a fine-tuning job id")):
        with pytest.raises(openai.BadRequestError, match=why):
            client.sdk.fine_tuning.jobs.create(
                model=str(client.model), training_file=prefs.id, method=dpo, extra_body={"from_checkpoint": bad}
            )


def test_dpo_pause_then_resume_through_the_worker(client):
    """Pause and resume work for DPO jobs as for supervised ones: the worker checkpoints on
    pause, and the next attempt resumes from that checkpoint to the end."""
    from tests.e2e.test_jobs import _step

    f = client.sdk.files.create(file=("prefs.jsonl", jsonl(preference_rows())), purpose="fine-tune")
    hp = {"n_epochs": 50, "max_steps": 12, "batch_size": 1, "gradient_accumulation_steps": 4,
          "checkpoint_every_steps": 1000}
    job = client.sdk.fine_tuning.jobs.create(
        model=str(client.model), training_file=f.id, method={"type": "dpo", "dpo": {"hyperparameters": hp}}
    )
    client.wait(job.id, lambda j: j.status == "running" and (_step(client, j.id) or 0) >= 2, what="step 2")
    assert client.sdk.fine_tuning.jobs.pause(job.id).status in ("pausing", "paused")
    paused = client.wait(job.id, lambda j: j.status in ("paused", "failed", "succeeded"), timeout=60, what="paused")
    assert paused.status == "paused"
    ckpts = client.sdk.fine_tuning.jobs.checkpoints.list(job.id).data
    assert len(ckpts) == 1 and ckpts[0].step_number < 12 and "rewards_margin" in ckpts[0].metrics.to_dict()
    assert client.sdk.fine_tuning.jobs.resume(job.id).status == "queued"
    done = client.wait_terminal(job.id)
    assert done.status == "succeeded", done.error
    messages = [e.message for e in client.sdk.fine_tuning.jobs.list_events(job.id, limit=100).data]
    assert f"Resuming from the checkpoint at step {ckpts[0].step_number}" in messages
    series = client.http.get(f"/v1/fine_tuning/jobs/{job.id}/metrics").json()["data"]
    assert [p["step"] for p in series if "loss" in p["values"]] == list(range(1, 13))
