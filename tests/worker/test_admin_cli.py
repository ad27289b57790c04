"""`tuneforge admin` as an operator runs it (a subprocess with the deployment's environment):
gc reports and reclaims what retention and crashes left behind; keys are listed (prefix
and times only) and revoked."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import Session

from core.models import Job
from core.services import auth
from core.services.files import delete_file
from core.services.jobs import cancel_job
from core.services.retention import collect_garbage
from tests.conftest import REPO


@pytest.fixture
def admin(settings_env, wsettings):
    env = {**os.environ, **settings_env, "TUNEFORGE_DATABASE_URL": wsettings.database_url,
           "TUNEFORGE_WORK_DIR": str(wsettings.work_dir), "TUNEFORGE_ARTIFACTS_URL": wsettings.artifacts_url}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "core.cli", "admin", *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=60)

    return run


def old_id(prefix: str) -> str:
    return f"{prefix}-{int((datetime.now(UTC) - timedelta(days=2)).timestamp() * 1e6):014x}" + "ab" * 5


def test_gc_dry_run_then_reclaim(admin, engine, store, wsettings, make_job, team_id):
    # A job that ended while a crashed worker still had its inputs on disk.
    job_id = make_job()
    with Session(engine) as s:
        cancel_job(s, team_id, job_id)
        file_id = s.get(Job, job_id).training_file_id
        s.commit()
    leftover = wsettings.work_dir / job_id / "1"
    (leftover / "input").mkdir(parents=True)
    (leftover / "input" / f"{file_id}.jsonl").write_text("{}\n")
    orphan = f"files/{team_id}/{old_id('file')}.jsonl"  # an upload whose row never committed
    store.put_bytes(orphan, b"{}\n")
    ckpt = f"jobs/{job_id}/checkpoints/step-7"  # a checkpoint whose row was pruned, the delete lost
    store.put_bytes(f"{ckpt}/adapter_model.safetensors", b"x")

    dry = admin("gc", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"would remove store object {orphan}" in dry.stdout
    assert f"would remove store object {ckpt}" in dry.stdout
    assert f"would remove work dir {leftover}" in dry.stdout
    assert store.exists(orphan) and leftover.exists()  # a dry run removes nothing

    done = admin("gc")
    assert done.returncode == 0, done.stderr
    assert f"removed store object {orphan}" in done.stdout and f"removed work dir {leftover}" in done.stdout
    assert not store.exists(orphan) and list(store.keys(ckpt)) == [] and not leftover.exists()
    again = admin("gc", "--dry-run")
    assert orphan not in again.stdout and str(leftover) not in again.stdout


def test_deleting_a_file_removes_it_from_work_dirs(engine, store, wsettings, make_job, team_id):
    """DELETE /v1/files/{id} is refused while an unfinished job uses the file, so a copy
    left on a worker belongs to an attempt that no longer runs: each worker's maintenance
    pass (the same gc, on its own work dir) removes it."""
    job_id = make_job()
    with Session(engine) as s:
        cancel_job(s, team_id, job_id)
        file_id = s.get(Job, job_id).training_file_id
        s.commit()
    copy = wsettings.work_dir / job_id / "2" / "input" / f"{file_id}.jsonl"
    copy.parent.mkdir(parents=True)
    copy.write_text("{}\n")
    with Session(engine) as s:
        delete_file(s, store, team_id, file_id)
        s.commit()
    collect_garbage(engine, store, wsettings.work_dir, dry_run=False, scan_store=False)
    assert not copy.exists() and not (wsettings.work_dir / job_id).exists()
    assert not any(p.name.startswith(file_id) for p in wsettings.work_dir.rglob("*"))


def test_list_and_revoke_keys(admin, engine):
    with Session(engine) as s:
        team = auth.create_team(s, "cli-keys")
        row, key = auth.create_api_key(s, team.id, name="ci")
        s.commit()
        key_id = row.id
    listed = admin("list-keys", "cli-keys")
    assert listed.returncode == 0, listed.stderr
    header, line = listed.stdout.strip().splitlines()
    assert header.split("\t") == ["id", "prefix", "created", "last_used", "revoked", "name"]
    fields = line.split("\t")
    assert fields[0] == key_id and key.startswith(fields[1]) and fields[3:5] == ["-", "-"] and fields[5] == "ci"
    assert key not in listed.stdout and row.key_hash not in listed.stdout
    revoked = admin("revoke-key", key_id)
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    with Session(engine) as s:
        with pytest.raises(Exception, match="Incorrect API key"):
            auth.authenticate(s, key)
    assert admin("revoke-key", "key-nope").returncode == 1
    assert "no team" in admin("list-keys", "no-such-team").stderr
