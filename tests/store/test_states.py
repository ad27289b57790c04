"""The status rule table (core/states.py) and its one writer, set_job_status — one class
per rule, Prefect style. Real PostgreSQL, each test rolled back."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core.errors import IllegalTransition, StaleAttempt
from core.models import Job, JobEvent, Team
from core.services import jobs
from core.services.lifecycle import set_job_status
from core.spec import JobSpec
from core.states import TERMINAL, TRANSITIONS, JobStatus, can_transition

S = JobStatus


@pytest.fixture
def team(db_session):
    t = Team(name="states-team")
    db_session.add(t)
    db_session.flush()
    return t


@pytest.fixture
def make_job(db_session, team):
    def make(status: S = S.QUEUED, attempt: int = 0) -> Job:
        spec = JobSpec(model="owner/model", training_file="file-x")
        job = Job(team_id=team.id, model=spec.model, training_file_id="file-x", spec=spec.model_dump(mode="json"),
                  spec_hash=spec.hash(), status=status.value, attempt=attempt)
        db_session.add(job)
        db_session.flush()
        return job

    return make


def events(session, job) -> list[JobEvent]:
    return list(session.scalars(select(JobEvent).where(JobEvent.job_id == job.id).order_by(JobEvent.id)))


class TestRuleTableCoversEveryStatus:
    def test_every_status_has_a_row(self):
        assert set(TRANSITIONS) == set(JobStatus)

    # Written out here, not read from TRANSITIONS: a wrong entry in the table fails this.
    # Every pair not listed must be refused.
    ALLOWED = """
        validating_files -> queued failed cancelled
        queued           -> running cancelled paused failed queued
        running          -> succeeded failed cancelling pausing queued paused cancelled
        pausing          -> paused cancelling failed succeeded queued cancelled
        cancelling       -> cancelled failed succeeded
        paused           -> queued cancelled
        succeeded        ->
        failed           ->
        cancelled        ->
    """

    @classmethod
    def expected(cls) -> set[tuple[str, str]]:
        pairs = set()
        for line in cls.ALLOWED.strip().splitlines():
            old, _, news = line.partition("->")
            pairs |= {(old.strip(), new) for new in news.split()}
        return pairs

    @pytest.mark.parametrize("old", list(JobStatus))
    @pytest.mark.parametrize("new", list(JobStatus))
    def test_every_transition_is_allowed_or_refused_as_written(self, old, new):
        assert can_transition(old, new) is ((old.value, new.value) in self.expected())

    def test_the_written_table_names_every_status(self):
        assert {old for old, _new in self.expected()} | set(TERMINAL) == set(JobStatus)


class TestTerminalIsFinal:
    @pytest.mark.parametrize("terminal", sorted(TERMINAL))
    @pytest.mark.parametrize("new", list(JobStatus))
    def test_no_way_out(self, db_session, make_job, terminal, new):
        job = make_job(terminal)
        with pytest.raises(IllegalTransition):
            set_job_status(db_session, job.id, new)
        assert job.status == terminal.value
        assert events(db_session, job) == []


class TestStaleAttemptRefused:
    def test_old_attempt_cannot_write(self, db_session, make_job):
        job = make_job(S.RUNNING, attempt=2)
        with pytest.raises(StaleAttempt):
            set_job_status(db_session, job.id, S.SUCCEEDED, attempt=1)
        assert job.status == S.RUNNING.value

    def test_current_attempt_can_write(self, db_session, make_job):
        job = make_job(S.RUNNING, attempt=2)
        set_job_status(db_session, job.id, S.SUCCEEDED, attempt=2)
        assert job.status == S.SUCCEEDED.value


class TestOneEventPerChange:
    def test_each_change_appends_a_status_event(self, db_session, make_job):
        job = make_job(S.QUEUED)
        for new in (S.RUNNING, S.PAUSING, S.PAUSED, S.QUEUED, S.CANCELLED):
            set_job_status(db_session, job.id, new)
        evs = events(db_session, job)
        assert [(e.type, e.data["from"], e.data["to"]) for e in evs] == [
            ("status", "queued", "running"), ("status", "running", "pausing"), ("status", "pausing", "paused"),
            ("status", "paused", "queued"), ("status", "queued", "cancelled"),
        ]

    def test_refused_change_appends_nothing(self, db_session, make_job):
        job = make_job(S.PAUSED)
        with pytest.raises(IllegalTransition):
            set_job_status(db_session, job.id, S.RUNNING)
        assert events(db_session, job) == []


class TestTimestampsAndLease:
    def test_running_sets_started_terminal_sets_finished(self, db_session, make_job):
        job = make_job(S.QUEUED)
        set_job_status(db_session, job.id, S.RUNNING)
        assert job.started_at is not None and job.finished_at is None
        set_job_status(db_session, job.id, S.FAILED, error={"code": "x", "message": "boom"})
        assert job.finished_at is not None and job.error["code"] == "x"
        assert events(db_session, job)[-1].level == "error"

    def test_requeue_releases_the_lease(self, db_session, make_job):
        job = make_job(S.RUNNING)
        job.worker_id = "w:1"
        set_job_status(db_session, job.id, S.QUEUED)
        assert job.worker_id is None and job.lease_expires_at is None


class TestUserCancel:
    @pytest.mark.parametrize("start,end", [(S.QUEUED, S.CANCELLED), (S.PAUSED, S.CANCELLED), (S.RUNNING, S.CANCELLING),
                                           (S.PAUSING, S.CANCELLING), (S.CANCELLING, S.CANCELLING)])
    def test_cancel(self, db_session, make_job, team, start, end):
        job = make_job(start)
        assert jobs.cancel_job(db_session, team.id, job.id).status == end.value

    @pytest.mark.parametrize("start", sorted(TERMINAL))
    def test_cancel_finished_is_illegal(self, db_session, make_job, team, start):
        with pytest.raises(IllegalTransition):
            jobs.cancel_job(db_session, team.id, make_job(start).id)


class TestUserPauseResume:
    @pytest.mark.parametrize("start,end", [(S.QUEUED, S.PAUSED), (S.RUNNING, S.PAUSING), (S.PAUSED, S.PAUSED)])
    def test_pause(self, db_session, make_job, team, start, end):
        assert jobs.pause_job(db_session, team.id, make_job(start).id).status == end.value

    @pytest.mark.parametrize("start", [S.CANCELLING, *sorted(TERMINAL)])
    def test_pause_illegal(self, db_session, make_job, team, start):
        with pytest.raises(IllegalTransition):
            jobs.pause_job(db_session, team.id, make_job(start).id)

    def test_resume_paused_requeues(self, db_session, make_job, team):
        assert jobs.resume_job(db_session, team.id, make_job(S.PAUSED).id).status == S.QUEUED.value

    @pytest.mark.parametrize("start", [S.QUEUED, S.RUNNING, S.PAUSING, *sorted(TERMINAL)])
    def test_resume_illegal(self, db_session, make_job, team, start):
        with pytest.raises(IllegalTransition):
            jobs.resume_job(db_session, team.id, make_job(start).id)
