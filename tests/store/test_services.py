"""Service rules that need no HTTP: model admission, downsampling, API keys, template
columns, on PostgreSQL and SQLite."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core.config import Settings
from core.errors import InvalidRequest, Unauthorized
from core.models import ApiKey, File, Job, Metric
from core.services import auth, jobs
from core.services.jobs import check_model, check_template_columns
from core.spec import TemplateSpec


def settings(**kw) -> Settings:
    return Settings(secret_key="x" * 32, **kw)


class TestModelAdmission:
    @pytest.mark.parametrize("model", ["meta-llama/Llama-3-8B", "beomi/Llama-3-Open-Ko-8B"])
    def test_any_hub_id_without_allowlist(self, model):
        check_model(settings(), model)

    @pytest.mark.parametrize("model", ["llama", "a/b/c", "../x/y", "owner/..", "http://evil/x", "relative/../x"])
    def test_not_hub_ids(self, model):
        with pytest.raises(InvalidRequest) as e:
            check_model(settings(), model)
        assert e.value.param == "model"

    def test_allowlist_exact_and_prefix(self):
        s = settings(model_allowlist=["meta-llama/", "beomi/Llama-3-Open-Ko-8B"])
        check_model(s, "meta-llama/Llama-3-8B")
        check_model(s, "beomi/Llama-3-Open-Ko-8B")
        with pytest.raises(InvalidRequest):
            check_model(s, "beomi/other")

    def test_local_dirs_only_inside_roots(self, tmp_path):
        root, outside = tmp_path / "models", tmp_path / "elsewhere"
        (root / "tiny").mkdir(parents=True)
        outside.mkdir()
        (root / "link").symlink_to(outside)
        s = settings(model_roots=[str(root)])
        check_model(s, str(root / "tiny"))
        for bad in (str(outside), str(root / "link"), str(root / "tiny" / ".." / ".." / "elsewhere"), str(root / "missing")):
            with pytest.raises(InvalidRequest):
                check_model(s, bad)


class TestMetricSeriesDownsampling:
    """Runs on PostgreSQL and SQLite (db_session is parametrized in tests/store)."""

    @pytest.mark.parametrize("n,k", [(1000, 10), (11, 10), (7, 2), (5, 1), (3, 10), (1001, 500), (1, 1)])
    def test_keeps_first_and_last_and_at_most_k_evenly(self, db_session, n, k):
        team = auth.create_team(db_session, f"metrics-{n}-{k}")
        job = Job(team_id=team.id, model="org/m", training_file_id="file-x", spec={}, spec_hash="h", status="running")
        db_session.add(job)
        db_session.flush()
        steps = [3 * i + 1 for i in range(n)]  # not 1..n: positions, not step numbers, are sampled
        db_session.add_all(Metric(job_id=job.id, step=s, seq=i, values={"loss": 1.0 / s}) for i, s in enumerate(steps))
        db_session.flush()
        out = [m.step for m in jobs.metric_series(db_session, team.id, job.id, max_points=k)]
        assert len(out) == min(n, k) and out[-1] == steps[-1] and out == sorted(set(out))
        if k > 1:
            assert out[0] == steps[0]
        gaps = [steps.index(b) - steps.index(a) for a, b in zip(out, out[1:])]
        assert not gaps or max(gaps) - min(gaps) <= max(2, min(gaps))  # evenly spaced, give or take the last
        window = jobs.metric_series(db_session, team.id, job.id, from_step=steps[n // 2], max_points=k)
        assert all(m.step >= steps[n // 2] for m in window) and window[-1].step == steps[-1]


class TestApiKeys:
    def test_only_the_hash_is_stored_and_it_authenticates(self, db_session):
        team = auth.create_team(db_session, "keys-team")
        row, key = auth.create_api_key(db_session, team.id)
        stored = db_session.scalars(select(ApiKey).where(ApiKey.id == row.id)).one()
        assert key not in (stored.key_hash, stored.prefix) and stored.key_hash == auth.hash_key(key)
        assert auth.authenticate(db_session, key).id == team.id
        for bad in (None, "", key + "x"):
            with pytest.raises(Unauthorized):
                auth.authenticate(db_session, bad)


class TestTemplateColumns:
    def f(self, columns):
        return File(id="file-1", columns=columns)

    def test_missing_column_named(self):
        with pytest.raises(InvalidRequest) as e:
            check_template_columns(self.f(["document", "summary"]), TemplateSpec(prompt="{article}", completion="{summary}"))
        assert e.value.param == "template.prompt" and "'article'" in e.value.message

    def test_chat_rows_need_no_template(self):
        check_template_columns(self.f(["messages"]), TemplateSpec())
        check_template_columns(self.f(["prompt", "completion"]), TemplateSpec())

    def test_system_template_still_reads_the_row(self):
        with pytest.raises(InvalidRequest) as e:
            check_template_columns(self.f(["messages"]), TemplateSpec(system="{persona}"))
        assert e.value.param == "template.system"


class TestHubDatasets:
    def test_allowed_hub_dataset_job_is_stored_with_its_long_reference(self, db_session, tmp_path):
        from core.jobrequest import JobCreateRequest
        from core.services.jobs import create_job

        team = auth.create_team(db_session, "hub-team")
        ref = "hf://datasets/" + "owner/" + "n" * 96 + "@" + "b" * 128 + ":validation"
        request = JobCreateRequest(model="owner/model", training_file=ref, template={"prompt": "{a}", "completion": "{b}"})
        with pytest.raises(InvalidRequest) as e:
            create_job(db_session, settings(), team.id, request)
        assert e.value.param == "training_file"
        job, created = create_job(db_session, settings(allow_hub_datasets=True), team.id, request)
        db_session.flush()
        assert created and job.status == "queued" and job.training_file_id == ref
