"""The results file of a succeeded job: OpenAI's step_metrics.csv, a `fine-tune-results`
file listed in `result_files`, read back with the SDK's `client.files.content`."""

from __future__ import annotations

import csv
import io

from sqlalchemy.orm import Session

from core.services import results, runs
from core.states import JobStatus
from core.storage import get_store


def succeed_with_metrics(api, run_as_worker, model_dir, stack_engine, settings) -> str:
    job_id = api.job(str(model_dir)).json()["id"]
    claim = run_as_worker(job_id)
    with Session(stack_engine) as s:
        runs.record_metrics(s, job_id, claim.attempt, 1, {"loss": 2.5, "token_accuracy": 0.25, "learning_rate": 1e-4})
        runs.record_metrics(s, job_id, claim.attempt, 2, {"loss": 2.0, "token_accuracy": 0.5})
        runs.record_metrics(s, job_id, claim.attempt, 2, {"eval_loss": 2.25, "eval_token_accuracy": 0.375})
        results.write_results_file(s, job_id, claim.attempt, get_store(settings))
        runs.finish(s, job_id, claim.attempt, JobStatus.SUCCEEDED, fine_tuned_model=f"ft:tiny:{job_id}")
        s.commit()
    return job_id


def test_results_file_is_listed_on_the_job_and_readable_with_the_sdk(api, other, run_as_worker, model_dir, stack_engine, settings):
    job_id = succeed_with_metrics(api, run_as_worker, model_dir, stack_engine, settings)
    job = api.sdk.fine_tuning.jobs.retrieve(job_id)
    assert len(job.result_files) == 1
    file_id = job.result_files[0]
    f = api.sdk.files.retrieve(file_id)
    assert (f.purpose, f.filename, f.status) == ("fine-tune-results", "step_metrics.csv", "processed")
    text = api.sdk.files.content(file_id).text
    assert text.splitlines() == [
        "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy",
        "1,2.5,0.25,,",
        "2,2.0,0.5,2.25,0.375",
    ]
    assert f.bytes == len(text.encode())
    assert [x.id for x in api.sdk.files.list(purpose="fine-tune-results").data] == [file_id]
    assert other.http.get(f"/v1/files/{file_id}/content").status_code == 404


def test_results_csv_prefers_openai_metric_names_and_leaves_gaps_empty():
    from core.models import Metric

    rows = [Metric(step=3, values={"train_loss": 1.0, "loss": 9.0, "valid_mean_token_accuracy": 0.5}),
            Metric(step=1, values={"loss": True, "token_accuracy": "n/a"})]
    parsed = list(csv.reader(io.StringIO(results.results_csv(rows).decode())))
    assert parsed == [list(results.COLUMNS), ["1", "", "", "", ""], ["3", "1.0", "", "", "0.5"]]
