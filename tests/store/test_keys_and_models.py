"""API key administration (revoke, list, last use) and what a job may load (revision), on
PostgreSQL and SQLite."""

from __future__ import annotations

from datetime import timedelta

import pytest

from core.config import Settings
from core.errors import InvalidRequest, NotFound, Unauthorized
from core.models import ApiKey
from core.services import auth
from core.services.jobs import check_model, check_model_use


def settings(**kw) -> Settings:
    return Settings(secret_key="x" * 32, **kw)


class TestKeys:
    def test_revoked_key_stops_working_and_the_other_keeps_working(self, db_session):
        team = auth.create_team(db_session, "keys-a")
        row1, key1 = auth.create_api_key(db_session, team.id)
        _row2, key2 = auth.create_api_key(db_session, team.id)
        assert auth.authenticate(db_session, key1).id == team.id
        revoked = auth.revoke_key(db_session, row1.id)
        first = revoked.revoked_at
        assert auth.revoke_key(db_session, row1.id).revoked_at == first  # twice keeps the first time
        with pytest.raises(Unauthorized):
            auth.authenticate(db_session, key1)
        assert auth.authenticate(db_session, key2).id == team.id

    def test_unknown_key_id(self, db_session):
        with pytest.raises(NotFound) as e:
            auth.revoke_key(db_session, "key-nope")
        assert e.value.param == "key_id"

    def test_list_keys_of_one_team_oldest_first(self, db_session):
        a, b = auth.create_team(db_session, "keys-b"), auth.create_team(db_session, "keys-c")
        made = [auth.create_api_key(db_session, a.id, name=f"k{i}") for i in range(3)]
        auth.create_api_key(db_session, b.id)
        listed = auth.list_keys(db_session, a.id)
        assert [k.id for k in listed] == [row.id for row, _key in made]
        assert all(key.startswith(k.prefix) and k.prefix != key for k, (_r, key) in zip(listed, made))
        assert auth.find_team(db_session, "keys-b").id == a.id and auth.find_team(db_session, b.id).id == b.id

    def test_last_used_at_is_recorded_at_most_once_a_minute(self, db_session):
        team = auth.create_team(db_session, "keys-d")
        row, key = auth.create_api_key(db_session, team.id)
        assert row.last_used_at is None
        auth.authenticate(db_session, key)
        db_session.refresh(row)
        first = row.last_used_at
        assert first is not None
        auth.authenticate(db_session, key)
        db_session.refresh(row)
        assert row.last_used_at == first  # within the minute: no second write
        row.last_used_at = first - timedelta(minutes=5)
        db_session.flush()
        auth.authenticate(db_session, key)
        db_session.refresh(row)
        assert row.last_used_at > first - timedelta(minutes=5)
        assert db_session.get(ApiKey, row.id).revoked_at is None


class TestRevision:
    @pytest.mark.parametrize("revision", ["main", "v1.0", "release/2024-05", "0123abc", "a" * 40])
    def test_branches_tags_commits(self, revision):
        check_model(settings(), "owner/model", revision)

    @pytest.mark.parametrize("revision", ["refs/pr/1", "refs/heads/main", "../main", "main..x", "-x", "a b", "x/", "", "/main",
                                          "x" * 129, "main\n", "a:b"])
    def test_refused(self, revision):
        with pytest.raises(InvalidRequest) as e:
            check_model(settings(), "owner/model", revision)
        assert e.value.param == "revision"

    def test_no_revision_for_a_local_directory(self, tmp_path):
        with pytest.raises(InvalidRequest) as e:
            check_model(settings(model_roots=[tmp_path]), str(tmp_path), "main")
        assert e.value.param == "revision"

    def test_trust_remote_code_follows_the_settings(self):
        spec = {"model": "owner/model", "trust_remote_code": True}
        with pytest.raises(InvalidRequest) as e:
            check_model_use(settings(), spec)
        assert e.value.param == "trust_remote_code"
        check_model_use(settings(allow_trust_remote_code=True), spec)


class TestSecrets:
    @pytest.mark.parametrize("embedded", [False, True])
    @pytest.mark.parametrize("secret", ["changeme", "secret", "tuneforge", "Dev", "short-one"])
    def test_placeholder_or_short_secrets_are_refused_in_every_mode(self, embedded, secret):
        with pytest.raises(ValueError, match="TUNEFORGE_SECRET_KEY"):
            Settings(embedded=embedded, secret_key=secret)

    def test_only_the_embedded_mode_may_start_without_one(self, tmp_path):
        from core.embedded import embedded_env

        Settings(embedded=True)  # `tuneforge up` generates one before anything is signed
        with pytest.raises(ValueError, match="TUNEFORGE_SECRET_KEY"):
            Settings(embedded=False)
        env = embedded_env(tmp_path, "127.0.0.1", 8000, environ={})
        generated = env["TUNEFORGE_SECRET_KEY"]
        assert len(generated) >= 32 and (tmp_path / "secret_key").read_text().strip() == generated
        Settings(embedded=True, secret_key=generated)
