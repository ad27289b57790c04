"""A worker that is stopped (deploy, Ctrl-C) hands its running job back: the training
process is killed, the job is re-queued with its message, and the next worker resumes it
from the newest checkpoint as attempt 2."""

from __future__ import annotations

import io
import secrets
import time

from celery import Celery
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from core.jobrequest import JobCreateRequest
from core.models import Job, JobEvent
from core.services.auth import create_team
from core.services.files import upload_file
from core.services.jobs import create_job
from core.storage import get_store
from core.tasks import RUN_JOB
from tests.conftest import settings_from_env
from tests.e2e.conftest import TERMINAL, training_processes
from tests.jobdata import EVALUATION, TEMPLATE, hyperparameters, jsonl, news_rows
from tests.stacks import celery_worker, stop_process


def test_stopped_worker_requeues_and_next_worker_resumes(e2e_env, e2e_model, tmp_path):
    env = {**e2e_env, "TUNEFORGE_QUEUE": f"tuneforge-stop-{secrets.token_hex(4)}"}
    settings = settings_from_env(env)
    engine = create_engine(env["TUNEFORGE_DATABASE_URL"])
    with Session(engine) as s:
        team = create_team(s, f"stop-{secrets.token_hex(3)}")
        f = upload_file(s, settings, get_store(settings), team.id, filename="n.jsonl", purpose="fine-tune",
                        stream=io.BytesIO(jsonl(news_rows())))
        job, _ = create_job(s, settings, team.id, JobCreateRequest(
            model=str(e2e_model), training_file=f.id, template=TEMPLATE, evaluation=EVALUATION,
            hyperparameters=hyperparameters(12, every=2, accumulate=8)))
        s.commit()
        job_id = job.id
    sender = Celery(broker=env["TUNEFORGE_BROKER_URL"])
    sender.send_task(RUN_JOB, args=[job_id], queue=env["TUNEFORGE_QUEUE"])

    def job_row() -> Job:
        with Session(engine) as s:
            return s.get(Job, job_id)

    def wait(pred, what, timeout=120):
        deadline = time.monotonic() + timeout
        while not pred():
            assert time.monotonic() < deadline, f"timed out waiting for {what}; job is {job_row().status}"
            time.sleep(0.3)

    try:
        with celery_worker(env, tmp_path / "w1.log") as first:
            wait(lambda: (job_row().step or 0) >= 3, "training past the first checkpoint")
            stop_process(first)
        assert training_processes(job_id) == []
        job = job_row()
        assert (job.status, job.attempt, job.worker_id) == ("queued", 1, None)
        with Session(engine) as s:
            messages = [e.message for e in s.scalars(select(JobEvent).where(JobEvent.job_id == job_id))]
        assert any(m.startswith("Worker stopped; job re-queued") for m in messages)

        with celery_worker(env, tmp_path / "w2.log"):  # the rejected message is delivered again
            wait(lambda: job_row().status in TERMINAL, "the second attempt to finish")
        job = job_row()
        assert job.status == "succeeded" and job.attempt == 2, job.error
        with Session(engine) as s:
            resumed = s.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.message.like("Resuming from%"))).all()
        assert resumed and resumed[0].attempt == 2
    finally:
        sender.close()
        engine.dispose()
