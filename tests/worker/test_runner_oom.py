"""An out-of-memory through the real runner and training process (the injected fault of
core.training.faults, which worker/childenv.py passes on only when the worker has it set):
retried with half the micro-batch and a warning event, or, when it happens again, the job
fails with code `out_of_memory` and a message that says what to lower."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.models import Job, JobEvent
from tests.worker.test_runner import WORKER
from worker import runner


def _events(engine, job_id, level):
    with Session(engine) as s:
        return [e.message for e in s.scalars(select(JobEvent).where(JobEvent.job_id == job_id,
                                                                   JobEvent.level == level).order_by(JobEvent.id))]


def test_an_out_of_memory_is_retried_then_fails_the_job_saying_what_to_lower(engine, wsettings, store, make_job,
                                                                            monkeypatch):
    monkeypatch.setenv("TUNEFORGE_INJECT_OOM", "micro_batch>1")
    job_id = make_job(max_steps=2)  # batch 2: the retry's micro-batch 1 x accumulation 2 runs
    assert runner.run_job(job_id, wsettings, WORKER, engine, store) == "succeeded"
    assert _events(engine, job_id, "warn") == [
        "out of memory at micro-batch 2: retrying from the start with micro-batch 1 x accumulation 2, checkpointing on"
    ]

    monkeypatch.setenv("TUNEFORGE_INJECT_OOM", "always")
    job_id = make_job(max_steps=2)
    assert runner.run_job(job_id, wsettings, WORKER, engine, store) == "failed"
    with Session(engine) as s:
        job = s.get(Job, job_id)
        assert job.error["code"] == "out_of_memory"
        assert job.error["message"] == (
            "out of memory: training ran out of GPU memory at micro-batch 1 x accumulation 2 with gradient "
            "checkpointing on after a retry; lower hyperparameters.max_seq_length (now 384)"
        )
    assert len(_events(engine, job_id, "warn")) == 1
