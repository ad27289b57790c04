"""The runner with a job asking for two GPUs, on a machine without any: its child runs as
two ranks under `accelerate launch` (gloo on the CPU). Success uploads what rank 0 wrote;
a pause reaches both ranks, leaves one checkpoint and the next attempt resumes from it; a
cancel leaves no rank behind."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.models import Artifact, Checkpoint, Job, JobEvent, Metric
from core.services.jobs import cancel_job, pause_job, resume_job
from tests.worker.test_runner import alive, job_row, run_in_thread, wait_for

TWO = {"resources": {"gpus": 2}}


def ranks_of(job_id: str) -> list[int]:
    """Live rank processes of the job (the launcher's command line names worker.child too)."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(") ", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if "worker.child" in cmd and "core.training.launch" not in cmd and f"/{job_id}/" in cmd and state != "Z":
            pids.append(int(proc.name))
    return pids


def test_two_gpu_job_runs_as_two_ranks_to_success(engine, wsettings, store, make_job):
    job_id = make_job(max_steps=4, **TWO)
    assert job_row(engine, job_id).gpus == 2
    t, out = run_in_thread(job_id, wsettings, engine, store)
    t.join(180)
    assert not t.is_alive(), "the two-rank job hung"
    assert out["status"] == "succeeded"
    with Session(engine) as s:
        job = s.get(Job, job_id)
        assert job.step == job.total_steps == 4 and "eval_loss" in job.result
        arts = {a.name for a in s.scalars(select(Artifact).where(Artifact.job_id == job_id))}
        assert {"adapter/adapter_model.safetensors", "adapter.tar.gz", "metrics.jsonl", "spec.json"} <= arts
        assert [c.step for c in s.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.step))] == [2, 4]
        assert sorted(s.scalars(select(Metric.step).where(Metric.job_id == job_id))) == [1, 2, 3, 4]
        phases = [e.data["phase"] for e in s.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.type == "phase"))]
        assert phases.count("training") == 1  # rank 1 reports nothing


def test_two_gpu_job_pauses_at_one_step_and_resumes(engine, wsettings, store, make_job, team_id):
    job_id = make_job(max_steps=12, every=1000, accumulate=8, **TWO)  # the pause writes the only checkpoint
    t, out = run_in_thread(job_id, wsettings, engine, store)
    wait_for(lambda: (job_row(engine, job_id).step or 0) >= 1, timeout=120, what="a first step")
    with Session(engine) as s:
        pause_job(s, team_id, job_id)
        s.commit()
    t.join(120)
    assert not t.is_alive(), "the paused two-rank job hung"
    assert out["status"] == "paused"
    with Session(engine) as s:
        job = s.get(Job, job_id)
        paused_at = [c.step for c in s.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id))]
        assert job.status == "paused" and len(paused_at) == 1 and 1 <= paused_at[0] < 12
        assert store.exists(f"{s.scalar(select(Checkpoint.storage_key).where(Checkpoint.job_id == job_id))}/rng_state_1.pth")
        resume_job(s, team_id, job_id)
        s.commit()
    t, out = run_in_thread(job_id, wsettings, engine, store)
    t.join(240)
    assert not t.is_alive(), "the resumed two-rank job hung"
    assert out["status"] == "succeeded"
    with Session(engine) as s:
        job = s.get(Job, job_id)
        assert job.attempt == 2 and job.step == 12
        resumed = s.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.message.like("Resuming from%"))).all()
        assert resumed and resumed[0].data["step"] == paused_at[0]


def test_cancel_stops_every_rank(engine, wsettings, store, make_job, team_id):
    job_id = make_job(max_steps=10_000, every=1000, **TWO)
    t, out = run_in_thread(job_id, wsettings, engine, store)
    wait_for(lambda: (job_row(engine, job_id).step or 0) >= 1, timeout=120, what="a first step")
    ranks = ranks_of(job_id)
    assert len(ranks) == 2
    with Session(engine) as s:
        cancel_job(s, team_id, job_id)
        s.commit()
    t.join(60)
    assert not t.is_alive() and out["status"] == "cancelled"
    wait_for(lambda: not any(alive(p) for p in ranks), timeout=15, what="both ranks to be gone")
