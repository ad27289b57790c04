"""Runner-side writes (core.services.runs): one claim wins, stale attempts are refused,
the heartbeat carries the client's pause/cancel back to the runner."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy.orm import Session

from core.errors import StaleAttempt
from core.models import Checkpoint, Job, JobEvent, Metric
from core.services import runs
from core.services.jobs import cancel_job, pause_job
from core.services.lifecycle import set_job_status
from core.states import JobStatus

S = JobStatus


def claim(engine, job_id, worker="w:1"):
    with Session(engine) as s:
        c = runs.claim_job(s, job_id, worker, 30)
        s.commit()
        return c


def test_two_concurrent_claims_one_runner(engine, make_job):
    job_id = make_job()
    barrier = threading.Barrier(2)
    results = []

    def contend(worker):
        barrier.wait()
        results.append(claim(engine, job_id, worker))

    threads = [threading.Thread(target=contend, args=(f"w:{i}",)) for i in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    winners = [c for c in results if c is not None]
    assert len(winners) == 1 and winners[0].attempt == 1
    with Session(engine) as s:
        job = s.get(Job, job_id)
        assert job.status == "running" and job.attempt == 1 and job.worker_id in ("w:0", "w:1")
        assert job.lease_expires_at is not None
    # A redelivered message for the claimed job is a no-op.
    assert claim(engine, job_id, "w:9") is None


def test_stale_attempt_writes_are_refused(engine, make_job):
    job_id = make_job()
    first = claim(engine, job_id)
    with Session(engine) as s:  # the lease expired; the reconciler re-queued it
        set_job_status(s, job_id, S.QUEUED, message="lease expired")
        s.commit()
    second = claim(engine, job_id, "w:2")
    assert second.attempt == first.attempt + 1
    with Session(engine) as s:
        for write in (
            lambda: runs.record_metrics(s, job_id, first.attempt, 1, {"loss": 1.0}),
            lambda: runs.record_phase(s, job_id, first.attempt, "training"),
            lambda: runs.record_checkpoint(s, job_id, first.attempt, 1, "k", {}),
            lambda: runs.record_artifact(s, job_id, first.attempt, "a", 1, "0" * 64, "k"),
            lambda: runs.heartbeat(s, job_id, first.attempt, 30),
            lambda: runs.finish(s, job_id, first.attempt, S.SUCCEEDED),
        ):
            with pytest.raises(StaleAttempt):
                write()
            s.rollback()
        runs.record_metrics(s, job_id, second.attempt, 1, {"loss": 2.0, "total_steps": 10})
        s.commit()
        assert s.get(Metric, (job_id, 1)).values == {"loss": 2.0, "total_steps": 10}
        job = s.get(Job, job_id)
        assert (job.step, job.total_steps, job.latest_metrics["loss"]) == (1, 10, 2.0)
        # A finished job refuses even its own (last) attempt.
        runs.finish(s, job_id, second.attempt, S.FAILED, {"code": "x", "message": "boom", "param": None})
        s.commit()
        with pytest.raises(StaleAttempt):
            runs.record_metrics(s, job_id, second.attempt, 2, {"loss": 1.0})


def test_heartbeat_extends_lease_and_returns_control(engine, make_job, team_id):
    job_id = make_job()
    c = claim(engine, job_id)
    with Session(engine) as s:
        before = s.get(Job, job_id).lease_expires_at
        assert runs.heartbeat(s, job_id, c.attempt, 600) is None
        s.commit()
        assert s.get(Job, job_id).lease_expires_at > before
        pause_job(s, team_id, job_id)
        s.commit()
        assert runs.heartbeat(s, job_id, c.attempt, 30) == "pause"
        cancel_job(s, team_id, job_id)
        s.commit()
        assert runs.heartbeat(s, job_id, c.attempt, 30) == "cancel"
        runs.finish(s, job_id, c.attempt, S.CANCELLED)
        s.commit()
        assert s.get(Job, job_id).status == "cancelled"


def test_metrics_merge_within_attempt_and_checkpoint_upsert(engine, make_job):
    job_id = make_job()
    c = claim(engine, job_id)
    with Session(engine) as s:
        runs.record_metrics(s, job_id, c.attempt, 4, {"loss": 1.5, "total_steps": 4})
        runs.record_metrics(s, job_id, c.attempt, 4, {"eval_loss": 1.7})
        runs.record_checkpoint(s, job_id, c.attempt, 4, "a", {"loss": 1.5})
        runs.record_checkpoint(s, job_id, c.attempt, 4, "b", {"loss": 1.5})
        runs.record_phase(s, job_id, c.attempt, "training")
        runs.record_phase(s, job_id, c.attempt, "training")
        s.commit()
        assert s.get(Metric, (job_id, 4)).values == {"loss": 1.5, "total_steps": 4, "eval_loss": 1.7}
        ckpts = s.query(Checkpoint).filter_by(job_id=job_id).all()
        assert [(k.step, k.storage_key) for k in ckpts] == [(4, "b")]
        assert runs.newest_checkpoint(s, job_id).storage_key == "b"
        phases = s.query(JobEvent).filter_by(job_id=job_id, type="phase").count()
        assert phases == 1
        runs.finish(s, job_id, c.attempt, S.CANCELLED)
        s.commit()
