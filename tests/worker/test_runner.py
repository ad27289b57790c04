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

from core.models import Artifact, Checkpoint, Job, JobEvent, Metric, Team
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
    return runs[0].child.pid if runs and runs[0].child else None


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
        assert any(n.startswith("tensorboard/events.out.tfevents.") for n in arts), sorted(arts)  # every job's
        ckpts = s.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.step)).all()
        assert [c.step for c in ckpts] == [2, 4] and all(c.metrics.get("loss") for c in ckpts)
        assert store.exists(f"{ckpts[-1].storage_key}/tuneforge.json")
        assert s.scalar(select(Metric).where(Metric.job_id == job_id, Metric.step == 1)).values["loss"] > 0
        phases = [e.data["phase"] for e in s.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.type == "phase").order_by(JobEvent.id))]
        assert phases == ["preparing_data", "loading_model", "training", "evaluating", "uploading"]
    assert not (wsettings.work_dir / job_id).joinpath("1").exists()  # scratch space cleaned


def test_cancel_kills_the_training_process(engine, wsettings, store, make_job, team_id, monkeypatch):
    # The worker's secrets: none of them may reach the training process.
    secrets = {"TUNEFORGE_SECRET_KEY": "s" * 32, "TUNEFORGE_DATABASE_URL": wsettings.database_url,
               "TUNEFORGE_S3_SECRET_ACCESS_KEY": "minio-secret", "AWS_SECRET_ACCESS_KEY": "aws-secret",
               "AWS_ACCESS_KEY_ID": "aws-id", "DATABASE_URL": wsettings.database_url}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    job_id = make_job(max_steps=10_000)
    t, out = run_in_thread(job_id, wsettings, engine, store)
    wait_for(lambda: (job_row(engine, job_id).step or 0) >= 1, what="training to start")
    pid = child_pid()
    env = dict(kv.split("=", 1) for kv in open(f"/proc/{pid}/environ").read().split("\0") if "=" in kv)
    assert not {n for n in env if n.startswith("TUNEFORGE_") or n.startswith("AWS_") or n in secrets}, sorted(env)
    assert not any(v in secrets.values() for v in env.values())
    assert env["HF_HUB_OFFLINE"] == "1" and env["PATH"] and "PYTHONPATH" in env  # what it needs does reach it
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
    assert not (wsettings.work_dir / job_id).exists()  # a failed attempt leaves no scratch space either


def test_model_is_checked_again_when_the_attempt_starts(engine, wsettings, store, make_job, model_dir):
    """Allowed at create, no longer allowed by the worker's settings when the job starts (the
    model root was removed meanwhile): the job fails with the reason, no process starts."""
    job_id = make_job()
    narrowed = wsettings.model_copy(update={"model_roots": [model_dir.parent / "elsewhere"]})
    assert runner.run_job(job_id, narrowed, WORKER, engine, store) == "failed"
    job = job_row(engine, job_id)
    assert job.error["code"] == "model_not_allowed" and job.error["param"] == "model"
    assert "model root" in job.error["message"] and job.step is None
    assert not (wsettings.work_dir / job_id).exists()


def test_checkpoints_beyond_the_team_policy_leave_the_store(engine, wsettings, store, make_job, team_id):
    with Session(engine) as s:
        team = s.get(Team, team_id)
        team.keep_checkpoints, team.keep_best_checkpoint = 1, False
        s.commit()
    try:
        job_id = make_job(max_steps=4, every=2)
        assert runner.run_job(job_id, wsettings, WORKER, engine, store) == "succeeded"
    finally:
        with Session(engine) as s:
            team = s.get(Team, team_id)
            team.keep_checkpoints, team.keep_best_checkpoint = 2, True
            s.commit()
    with Session(engine) as s:
        written = [e.data["step"] for e in s.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.type == "checkpoint"))]
        kept = s.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id)).all()
        arts = s.scalars(select(Artifact.name).where(Artifact.job_id == job_id)).all()
    assert sorted(written) == [2, 4] and [c.step for c in kept] == [4]
    assert store.exists(f"{kept[0].storage_key}/tuneforge.json")
    assert list(store.keys(f"jobs/{job_id}/checkpoints/step-2")) == []
    assert "adapter/adapter_model.safetensors" in arts  # artifacts are never pruned


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
