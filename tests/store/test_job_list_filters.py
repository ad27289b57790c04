"""The job list's metadata filter and `after` check (core/services/jobs.py, pagination) on
PostgreSQL and SQLite alike, with keys that a JSON path would otherwise misread."""

from __future__ import annotations

import pytest

from core.errors import InvalidRequest
from core.models import Job
from core.services import auth, jobs
from core.spec import JobSpec

KEYS = ['plain', 'a"b', "a\\b", "a.b", "a'b", "$[0]", "요약 key", "a[b]"]


def test_metadata_filter_matches_exact_pairs_for_any_key(db_session):
    team = auth.create_team(db_session, "filters")
    spec = JobSpec(model="owner/model", training_file="file-x")

    def job(metadata):
        j = Job(team_id=team.id, model=spec.model, training_file_id="file-x", spec=spec.model_dump(mode="json"),
                spec_hash=spec.hash(), status="queued", metadata_=metadata)
        db_session.add(j)
        db_session.flush()
        return j.id

    ids = {key: job({key: "v", "other": "1"}) for key in KEYS}
    none = job(None)
    for key in KEYS:
        assert [j.id for j in jobs.list_jobs(db_session, team.id, metadata={key: "v"}).data] == [ids[key]], key
        assert jobs.list_jobs(db_session, team.id, metadata={key: "w"}).data == []
    both = jobs.list_jobs(db_session, team.id, metadata={"other": "1"}, limit=100).data
    assert none not in {j.id for j in both} and len(both) == len(KEYS)
    with pytest.raises(InvalidRequest) as e:
        jobs.list_jobs(db_session, team.id, after="ftjob-unknown")
    assert e.value.param == "after"
