"""Transfers keep the job's lease alive: a store slower than a whole lease must not make the
scheduler think the worker died. The store here is the real local store, slowed down."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from core.errors import StaleAttempt
from core.models import Job, as_utc, utcnow
from core.services import runs
from core.services.lifecycle import set_job_status
from core.storage import LocalStore
from worker.runner import with_db_retry
from worker.transfers import LeaseKeeper, Transfers

LEASE = 5.0  # the smallest lease Settings allow
WORKER = "slow-host:1"


class SlowStore(LocalStore):
    """Every object takes `delay` seconds to move, like a big file over a slow link."""

    def __init__(self, base: LocalStore, delay: float):
        super().__init__(base.root, public_url=base.public_url, secret=base._secret)
        self.delay = delay

    def put_stream(self, key, stream, max_bytes=None):
        time.sleep(self.delay)
        return super().put_stream(key, stream, max_bytes)

    def get_file(self, key, dest):
        time.sleep(self.delay)
        return super().get_file(key, dest)


@pytest.fixture
def claimed(engine, make_job):
    """A job claimed with a 5 s lease, as a runner holds it."""
    job_id = make_job()
    claim = with_db_retry(engine, runs.claim_job, job_id, WORKER, LEASE)
    assert claim is not None
    return claim


def lease_left(engine, job_id) -> float:
    with Session(engine) as s:
        return (as_utc(s.get(Job, job_id).lease_expires_at) - utcnow()).total_seconds()


def transfers_for(claim, engine, store) -> Transfers:
    beat = lambda: with_db_retry(engine, runs.heartbeat, claim.job_id, claim.attempt, LEASE)  # noqa: E731
    return Transfers(claim.job_id, store, engine, beat, heartbeat_seconds=0.5)


def outputs(tmp_path: Path, n: int) -> Path:
    out = tmp_path / "out"
    (out / "adapter").mkdir(parents=True)
    for i in range(n):
        (out / f"report-{i}.json").write_text("{}")
    (out / "adapter" / "adapter_config.json").write_text("{}")
    return out


def test_a_transfer_longer_than_the_lease_keeps_it_alive(engine, store, claimed, tmp_path):
    slow = SlowStore(store, delay=1.0)
    started = time.monotonic()
    uploaded = transfers_for(claimed, engine, slow).upload_artifacts(outputs(tmp_path, 5), tmp_path)
    took = time.monotonic() - started
    assert took > LEASE + 1  # 7 objects at 1 s each: longer than the whole lease
    assert {u.name for u in uploaded} >= {"adapter.tar.gz", "adapter/adapter_config.json", "report-0.json"}
    assert lease_left(engine, claimed.job_id) > LEASE - 1.5  # renewed up to the end, not left to lapse
    # The scheduler's view: the lease did not expire, so nothing re-queues the job.
    with Session(engine) as s:
        assert s.get(Job, claimed.job_id).status == "running"


def test_downloads_keep_the_lease_alive_too(engine, store, claimed, tmp_path):
    for i in range(3):
        store.put_bytes(f"jobs/{claimed.job_id}/checkpoints/step-9/part-{i}", b"x" * 10)
    slow = SlowStore(store, delay=2.5)
    dest = transfers_for(claimed, engine, slow).fetch_checkpoint(f"jobs/{claimed.job_id}/checkpoints/step-9", tmp_path / "ckpt")
    assert sorted(p.name for p in dest.iterdir()) == ["part-0", "part-1", "part-2"]
    assert lease_left(engine, claimed.job_id) > LEASE - 1.5


def test_a_job_that_moved_on_during_a_transfer_stops_the_attempt(engine, store, claimed, tmp_path):
    """The lease keeper's fenced heartbeat is refused once the job is no longer this
    attempt's; the transfer then raises StaleAttempt like any other runner write."""
    with Session(engine) as s:
        set_job_status(s, claimed.job_id, "queued", attempt=claimed.attempt, message="taken away by the test")
        s.commit()
    slow = SlowStore(store, delay=0.6)
    with pytest.raises(StaleAttempt):
        transfers_for(claimed, engine, slow).upload_artifacts(outputs(tmp_path, 2), tmp_path)


def test_the_lease_keeper_passes_on_pause_and_cancel_requests():
    answers = iter([None, "pause", None])
    with LeaseKeeper(lambda: next(answers, None), every=0.05) as keeper:
        time.sleep(0.5)
    assert keeper.beats >= 3 and keeper.control == "pause"


def test_the_lease_keeper_stops_with_its_block():
    beats = []
    with LeaseKeeper(lambda: beats.append(1), every=0.05):
        time.sleep(0.3)
    n = len(beats)
    time.sleep(0.3)
    assert n >= 2 and len(beats) == n


def test_a_worker_stopping_while_inputs_download_starts_no_training(engine, wsettings, store, make_job):
    """stop_all() during the input transfer: the job goes back to the queue, and no training
    process is started after the worker was asked to stop."""
    import threading

    from worker import runner

    job_id = make_job()
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("status", runner.run_job(job_id, wsettings, WORKER, engine,
                                                                                SlowStore(store, delay=2.0))),
                         daemon=True, name=f"runner-{job_id}")
    t.start()
    deadline = time.monotonic() + 30
    while job_id not in runner.ACTIVE and time.monotonic() < deadline:
        time.sleep(0.05)
    runner.stop_all("test")
    t.join(60)
    assert not t.is_alive() and out["status"] == "queued"
    with Session(engine) as s:
        job = s.get(Job, job_id)
        assert job.status == "queued" and job.step is None
