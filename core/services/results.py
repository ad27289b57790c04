"""The results file of a succeeded job, as OpenAI makes it: a CSV of the per-step metrics
(`step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy`) stored as a file of
purpose `fine-tune-results`, listed in the job's `result_files` and read with
`client.files.content(id)` like any other file.

Written by the runner just before it marks the job succeeded (one fenced write), from the
Metric rows already in SQL, so the CSV shows exactly the series the API serves.
"""

from __future__ import annotations

import csv
import io

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.models import File, Metric, new_id
from core.services.metric_names import openai_metrics
from core.services.runs import _fenced

PURPOSE = "fine-tune-results"
FILENAME = "step_metrics.csv"
COLUMNS = ("step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy")
# Values come under OpenAI's metric names (core.services.metric_names: one table for
# checkpoints, events and this file); the CSV spells one of them differently.
_METRIC_OF_COLUMN = {"train_accuracy": "train_mean_token_accuracy"}


def results_csv(metrics: list[Metric]) -> bytes:
    """One row per logged step, in step order; a value the step did not log stays empty."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for m in sorted(metrics, key=lambda m: m.step):
        values = openai_metrics(m.values)
        writer.writerow([m.step, *(values.get(_METRIC_OF_COLUMN.get(c, c), "") for c in COLUMNS[1:])])
    return out.getvalue().encode()


def write_results_file(session: Session, job_id: str, attempt: int, store) -> File:
    """Store the job's results CSV as a file of its team and list it in `result_files`.
    Fenced like every runner write; a retried transaction replaces the earlier file."""
    job = _fenced(session, job_id, attempt)
    metrics = list(session.scalars(select(Metric).where(Metric.job_id == job_id)))
    data = results_csv(metrics)
    file_id = new_id("file")
    key = f"files/{job.team_id}/{file_id}.csv"
    stored = store.put_bytes(key, data)
    f = File(
        id=file_id, team_id=job.team_id, filename=FILENAME, purpose=PURPOSE, bytes=stored.bytes, sha256=stored.sha256,
        storage_key=key, format="csv", row_count=len(metrics), columns=list(COLUMNS), status="processed",
    )
    session.add(f)
    job.result_files = [file_id]
    session.flush()
    return f
