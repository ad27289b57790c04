"""Retention rules (core/services/retention.py) on PostgreSQL and SQLite: which checkpoints
a finished job keeps, which history goes after the retention period, what counts as an
orphaned store object or a stale work dir."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from core.models import Checkpoint, File, Job, JobEvent, Metric, new_id
from core.services import auth, retention
from core.spec import JobSpec

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


@pytest.fixture
def team(db_session):
    return auth.create_team(db_session, "retention")


@pytest.fixture
def make_job(db_session, team):
    def make(status: str, finished_at: datetime | None = None, attempt: int = 1) -> Job:
        spec = JobSpec(model="owner/model", training_file="file-x")
        job = Job(team_id=team.id, model=spec.model, training_file_id="file-x", spec=spec.model_dump(mode="json"),
                  spec_hash=spec.hash(), status=status, attempt=attempt, finished_at=finished_at)
        db_session.add(job)
        db_session.flush()
        return job

    return make


def add_checkpoints(session, job, losses: dict[int, float | None]) -> None:
    for step, loss in losses.items():
        session.add(Checkpoint(job_id=job.id, step=step, spec_hash=job.spec_hash, storage_key=f"jobs/{job.id}/checkpoints/step-{step}",
                               metrics={"loss": 1.0, **({"eval_loss": loss} if loss is not None else {})}))
    session.flush()


class TestWhichCheckpointsStay:
    def test_newest_two_and_the_best(self):
        ckpts = [(10, {"eval_loss": 2.0}), (20, {"eval_loss": 0.5}), (30, {"eval_loss": 1.0}), (40, {"eval_loss": 1.5})]
        assert retention.checkpoints_to_keep(ckpts, 2, True) == {20, 30, 40}
        assert retention.checkpoints_to_keep(ckpts, 2, False) == {30, 40}
        assert retention.checkpoints_to_keep(ckpts, 0, True) == {20}
        assert retention.checkpoints_to_keep(ckpts, 0, False) == set()
        assert retention.checkpoints_to_keep(ckpts, 9, False) == {10, 20, 30, 40}

    def test_without_eval_loss_no_checkpoint_is_best(self):
        assert retention.checkpoints_to_keep([(1, {"loss": 0.1}), (2, None), (3, {})], 1, True) == {3}

    def test_a_finished_job_drops_the_rest(self, db_session, make_job):
        job = make_job("succeeded")
        add_checkpoints(db_session, job, {2: 3.0, 4: 1.0, 6: 2.0, 8: 2.5, 10: None})
        assert retention.finished_jobs_to_prune(db_session) == [job.id]
        gone = retention.prune_checkpoints(db_session, job.id)
        assert sorted(gone) == [f"jobs/{job.id}/checkpoints/step-{n}" for n in (2, 6)]
        left = db_session.scalars(select(Checkpoint.step).where(Checkpoint.job_id == job.id).order_by(Checkpoint.step)).all()
        assert left == [4, 8, 10] and retention.finished_jobs_to_prune(db_session) == []

    @pytest.mark.parametrize("status", ["running", "paused", "queued"])
    def test_a_job_that_may_resume_keeps_everything(self, db_session, make_job, status):
        job = make_job(status)
        add_checkpoints(db_session, job, {2: 1.0, 4: 1.0, 6: 1.0})
        assert retention.prune_checkpoints(db_session, job.id) == []
        assert retention.finished_jobs_to_prune(db_session) == []

    def test_the_team_policy_decides(self, db_session, make_job, team):
        team.keep_checkpoints, team.keep_best_checkpoint = 1, False
        job = make_job("failed")
        add_checkpoints(db_session, job, {2: 0.1, 4: 1.0})
        assert retention.prune_checkpoints(db_session, job.id) == [f"jobs/{job.id}/checkpoints/step-2"]


class TestHistory:
    def test_old_finished_jobs_lose_events_and_points_but_not_their_status_history(self, db_session, make_job):
        old = make_job("succeeded", finished_at=NOW - timedelta(days=31))
        recent = make_job("succeeded", finished_at=NOW - timedelta(days=2))
        running = make_job("running")
        for job in (old, recent, running):
            db_session.add_all([JobEvent(job_id=job.id, type="status", message="s"), JobEvent(job_id=job.id, message="m"),
                                Metric(job_id=job.id, step=1, seq=1, values={"loss": 1.0})])
        db_session.flush()
        assert retention.prune_history(db_session, NOW, 30) == (1, 1)

        def count(model, job):
            return db_session.scalar(select(func.count()).select_from(model).where(model.job_id == job.id))

        assert (count(JobEvent, old), count(Metric, old)) == (1, 0)
        assert db_session.scalars(select(JobEvent.type).where(JobEvent.job_id == old.id)).all() == ["status"]
        assert (count(JobEvent, recent), count(Metric, recent)) == (2, 1)
        assert (count(JobEvent, running), count(Metric, running)) == (2, 1)


class TestOrphans:
    def test_what_no_row_refers_to(self, db_session, make_job, team):
        live = File(team_id=team.id, filename="a.jsonl", bytes=1, sha256="0" * 64, storage_key=f"files/{team.id}/file-a.jsonl",
                    format="jsonl", row_count=1, columns=["a"])
        deleted = File(team_id=team.id, filename="b.jsonl", bytes=1, sha256="0" * 64, storage_key=f"files/{team.id}/file-b.jsonl",
                       format="jsonl", row_count=1, columns=["a"], deleted_at=NOW)
        db_session.add_all([live, deleted])
        done, running = make_job("succeeded"), make_job("running")
        add_checkpoints(db_session, done, {4: 1.0})
        old_id = "file-" + f"{int((NOW - timedelta(days=1)).timestamp() * 1e6):014x}" + "00" * 5
        young_id = "file-" + f"{int((NOW - timedelta(minutes=5)).timestamp() * 1e6):014x}" + "00" * 5
        keys = [
            live.storage_key, deleted.storage_key, f"files/{team.id}/{old_id}.jsonl", f"files/{team.id}/{young_id}.jsonl",
            f"jobs/{done.id}/checkpoints/step-4/a", f"jobs/{done.id}/checkpoints/step-2/a", f"jobs/{done.id}/checkpoints/step-2/b",
            f"jobs/{done.id}/artifacts/adapter.tar.gz", f"jobs/{running.id}/checkpoints/step-2/a",
            f"jobs/{running.id}/artifacts/x", "jobs/ftjob-gone/artifacts/y",
        ]
        orphans = [o.key for o in retention.orphaned_objects(db_session, keys, NOW)]
        assert orphans == [
            deleted.storage_key, f"files/{team.id}/{old_id}.jsonl",  # the young one may be an upload in flight
            f"jobs/{done.id}/checkpoints/step-2",  # once per checkpoint dir
            f"jobs/{done.id}/artifacts/adapter.tar.gz", "jobs/ftjob-gone/artifacts/y",
        ]  # a running job's objects are its runner's until it ends

    def test_ids_carry_their_creation_time(self):
        born = retention.created_at_of(new_id("file"))
        assert born is not None and abs((born - datetime.now(UTC)).total_seconds()) < 5
        assert retention.created_at_of("something-else") is None


class TestStaleWorkDirs:
    def test_only_live_attempts_keep_their_dirs(self, db_session, make_job, tmp_path):
        running = make_job("running", attempt=2)
        done = make_job("succeeded")
        dirs = [tmp_path / running.id / "2", tmp_path / running.id / "1", tmp_path / done.id / "1", tmp_path / "ftjob-gone" / "1"]
        for d in dirs:
            (d / "input").mkdir(parents=True)
        assert set(retention.stale_work_dirs(db_session, tmp_path)) == set(dirs[1:])


def test_the_newest_three_epoch_checkpoints_stay_whatever_the_policy():
    """OpenAI keeps the last three epochs' checkpoints as usable models."""
    ckpts = [(s, {"loss": 1.0, **({"completed_epoch": s // 10} if s % 10 == 0 else {})}) for s in range(5, 55, 5)]
    assert retention.checkpoints_to_keep(ckpts, 0, False) == {30, 40, 50}
    assert retention.checkpoints_to_keep(ckpts, 2, False) == {30, 40, 45, 50}
    assert retention.checkpoints_to_keep([(1, {}), (2, None)], 0, False) == set()
