"""A real run through the worker's runner leaves OpenAI's results file behind."""

from __future__ import annotations

import csv
import io

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.models import File, Job, Metric
from worker import runner


def test_a_run_that_succeeds_lists_its_step_metrics_csv(engine, wsettings, store, make_job):
    job_id = make_job(max_steps=2, every=2)
    assert runner.run_job(job_id, wsettings, "results-host:1", engine, store) == "succeeded"
    with Session(engine) as s:
        job = s.get(Job, job_id)
        (file_id,) = job.result_files
        f = s.get(File, file_id)
        steps = list(s.scalars(select(Metric.step).where(Metric.job_id == job_id).order_by(Metric.step)))
    assert (f.team_id, f.purpose) == (job.team_id, "fine-tune-results")
    with store.open(f.storage_key) as body:
        rows = list(csv.DictReader(io.StringIO(body.read().decode())))
    assert [int(r["step"]) for r in rows] == steps and steps[-1] == 2
    assert all(float(r["train_loss"]) > 0 for r in rows if r["train_loss"])
    assert rows[-1]["valid_loss"] != ""  # validation_split gives the last step an eval loss
