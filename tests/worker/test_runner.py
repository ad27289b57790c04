"""The runner with a real training child on the tiny model: success uploads artifacts and
checkpoints; cancel kills the child's process group; a crash fails the job with the reason;
a paused job resumes from its uploaded checkpoint on the next attempt."""

from __future__ import annotations

import os
import signal
import threading
import time

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.models import Artifact, Checkpoint, Job, JobEvent, Metric
from core.services.jobs import cancel_job, pause_job, resume_job
from worker import runner

WORKER = "test-host:1"


def run_in_thread(job_id, wsettings, engine, store):
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("status", runner.run_job(job_id, wsettings, WORKER, engine, store)),
                         daemon=True, name=f"runner-{job_id}")
    t.start()
    return t, out


def join(t: threading.Thread, timeout: float = 60) -> None:
    """The runner thread must have ended. If it has not, stop its child (so it cannot go on
    retrying behind the suite's back), then fail."""
    t.join(timeout)
    if t.is_alive():
        runner.stop_all("test timed out")
        t.join(30)
        raise AssertionError(f"the runner thread was still running after {timeout}s")


def wait_for(predicate, timeout=90, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def job_row(engine, job_id) -> Job:
    with Session(engine) as s:
        return s.get(Job, job_id)


def child_pid():
    runs = list(runner.ACTIVE.values())
    return runs[0].proc.pid if runs and runs[0].proc else None


def alive(pid) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def test_runs_a_job_to_success_with_artifacts(engine, wsettings, store, make_job):
    job_id = make_job(max_steps=4)
    assert runner.run_job(job_id, wsettings, WORKER, engine, store) == "succeeded"
    # A second delivery of the same message is a no-op.
    assert runner.run_job(job_id, wsettings, WORKER, engine, store) is None
    with Session(engine) as s:
        job = s.get(Job, job_id)
        assert job.status == "succeeded" and job.attempt == 1 and job.worker_id is None
        assert job.fine_tuned_model == f"ft:tiny-llama:{job.team.name}:w:{job_id}"
        assert job.trained_tokens and job.trained_tokens > 0
        assert "eval_loss" in job.result and job.step == job.total_steps == 4
        arts = {a.name: a for a in s.scalars(select(Artifact).where(Artifact.job_id == job_id))}
        for name in ("adapter/adapter_model.safetensors", "adapter/adapter_config.json", "adapter.tar.gz",
                     "eval_report.json", "metrics.jsonl", "spec.json", "dataset_report.json"):
            assert name in arts, sorted(arts)
            assert store.exists(arts[name].storage_key) and arts[name].bytes > 0
        assert not any(n.startswith("checkpoints/") for n in arts)
        ckpts = s.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.step)).all()
        assert [c.step for c in ckpts] == [2, 4] and all(c.metrics.get("loss") for c in ckpts)
        assert store.exists(f"{ckpts[-1].storage_key}/tuneforge.json")
        assert s.scalar(select(Metric).where(Metric.job_id == job_id, Metric.step == 1)).values["loss"] > 0
        phases = [e.data["phase"] for e in s.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.type == "phase").order_by(JobEvent.id))]
        assert phases == ["preparing_data", "loading_model", "training", "evaluating", "uploading"]
    assert not (wsettings.work_dir / job_id).joinpath("1").exists()  # scratch space cleaned


def test_cancel_kills_the_training_process(engine, wsettings, store, make_job, team_id):
    job_id = make_job(max_steps=10_000)
    t, out = run_in_thread(job_id, wsettings, engine, store)
    wait_for(lambda: (job_row(engine, job_id).step or 0) >= 1, what="training to start")
    pid = child_pid()
    with Session(engine) as s:
        cancel_job(s, team_id, job_id)
        s.commit()
    join(t)
    assert out["status"] == "cancelled" and not alive(pid)
    assert job_row(engine, job_id).status == "cancelled"


def test_child_killed_by_a_signal_loses_the_attempt_then_fails_when_attempts_run_out(engine, wsettings, store, make_job):
    """An OOM kill (SIGKILL of the training process only) re-queues the job while attempts
    remain; on the last attempt it fails with the reason."""
    job_id = make_job(max_steps=10_000)
    with Session(engine) as s:
        s.get(Job, job_id).max_attempts = 2
        s.commit()
    for attempt, expected in ((1, "queued"), (2, "failed")):
        t, out = run_in_thread(job_id, wsettings, engine, store)
        wait_for(lambda n=attempt: _metric_of_attempt(engine, job_id, n), what=f"attempt {attempt} training")
        os.kill(child_pid(), signal.SIGKILL)  # what an OOM kill looks like
        join(t)
        job = job_row(engine, job_id)
        assert out["status"] == expected and job.status == expected and job.attempt == attempt
    assert job.error["code"] == "training_process_crashed"
    assert "signal 9" in job.error["message"] and "attempt 2 of 2" in job.error["message"]
    with Session(engine) as s:
        lost = s.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id, JobEvent.message.like("Attempt 1 of 2 lost%"))).all()
    assert len(lost) == 1 and "re-queued" in lost[0]


def _metric_of_attempt(engine, job_id, attempt) -> bool:
    with Session(engine) as s:
        return s.scalars(select(Metric).where(Metric.job_id == job_id, Metric.attempt == attempt)).first() is not None


def test_bad_model_fails_with_a_clear_message(engine, wsettings, store, make_job, model_dir):
    broken = model_dir.parent / "broken-model"
    broken.mkdir(exist_ok=True)
    (broken / "config.json").write_text("{not json")
    job_id = make_job(model=broken)
    assert runner.run_job(job_id, wsettings, WORKER, engine, store) == "failed"
    job = job_row(engine, job_id)
    assert job.error["code"] == "invalid_training_input" and "model" in job.error["message"]


def test_pause_checkpoints_and_next_attempt_resumes(engine, wsettings, store, make_job, team_id):
    job_id = make_job(max_steps=12, every=1000, accumulate=8)  # the pause writes the only checkpoint
    t, out = run_in_thread(job_id, wsettings, engine, store)
    wait_for(lambda: (job_row(engine, job_id).step or 0) >= 2, what="a few steps")
    with Session(engine) as s:
        pause_job(s, team_id, job_id)
        s.commit()
    join(t)
    assert out["status"] == "paused"
    job = job_row(engine, job_id)
    assert job.status == "paused" and job.step < 12
    with Session(engine) as s:
        paused_at = max(s.scalars(select(Checkpoint.step).where(Checkpoint.job_id == job_id)))
        resume_job(s, team_id, job_id)
        s.commit()
    assert paused_at >= 2
    assert runner.run_job(job_id, wsettings, WORKER, engine, store) == "succeeded"
    with Session(engine) as s:
        job = s.get(Job, job_id)
        assert job.attempt == 2 and job.step == 12
        resumed = s.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.message.like("Resuming from%"))).all()
        assert resumed and resumed[0].data["step"] == paused_at and resumed[0].attempt == 2
