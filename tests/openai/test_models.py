"""/v1/models through the official SDK: base models this server allows, the team's
fine-tuned models with their job and adapter, deletion of a fine-tuned model's artifacts,
and the export that hands adapters to vLLM's filesystem LoRA resolver."""

from __future__ import annotations

import json

import openai
import pytest
from sqlalchemy.orm import Session

from core.config import Settings
from core.services import models_catalog, runs
from core.states import JobStatus
from core.storage import get_store


@pytest.fixture
def ft_model(api, run_as_worker, model_dir, stack_engine, settings):
    """A succeeded job of `api`'s team with an adapter, checkpoints at steps 1-5 (1-4 at the
    end of an epoch) and an `ft:` name whose base has a slash (as hub bases do). Returns
    (model id, job id)."""
    store = get_store(settings)
    job_id = api.job(str(model_dir), suffix="cat").json()["id"]
    claim = run_as_worker(job_id)
    name = f"ft:org/tiny:{api.team_id}:cat:{job_id}"
    files = {
        "adapter/adapter_config.json": json.dumps({"peft_type": "LORA", "base_model_name_or_path": str(model_dir), "r": 8}).encode(),
        "adapter/adapter_model.safetensors": b"weights",
        "adapter.tar.gz": b"archive",
    }
    with Session(stack_engine) as s:
        for rel, data in files.items():
            key = f"jobs/{job_id}/artifacts/{rel}"
            o = store.put_bytes(key, data)
            runs.record_artifact(s, job_id, claim.attempt, rel, o.bytes, o.sha256, key)
        for step in range(1, 6):
            store.put_bytes(f"jobs/{job_id}/checkpoints/step-{step}/adapter_model.safetensors", b"ckpt")
            metrics = {"completed_epoch": step} if step < 5 else {}
            runs.record_checkpoint(s, job_id, claim.attempt, step, f"jobs/{job_id}/checkpoints/step-{step}", metrics)
        runs.finish(s, job_id, claim.attempt, JobStatus.SUCCEEDED, fine_tuned_model=name)
        s.commit()
    return name, job_id


@pytest.fixture(scope="session")
def local_base(stack_dir):
    d = stack_dir / "models" / "catalog-base"
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text("{}")
    return d


def test_list_and_retrieve_base_and_fine_tuned_models(api, other, ft_model, local_base, model_dir):
    name, job_id = ft_model
    listed = {m.id: m for m in api.sdk.models.list().data}
    assert listed[str(local_base)].owned_by == "system" and listed[str(local_base)].object == "model"
    ft = listed[name]
    assert ft.owned_by == api.team_id and ft.created > 0
    extra = ft.model_dump()
    assert extra["parent"] == str(model_dir) and extra["fine_tuning_job_id"] == job_id
    assert extra["adapter"]["files"] == ["adapter/adapter_config.json", "adapter/adapter_model.safetensors"]
    assert extra["adapter"]["archive"] == "adapter.tar.gz" and len(extra["adapter"]["sha256"]) == 64

    assert api.sdk.models.retrieve(name).id == name  # the SDK sends the '/' of the id as %2F
    assert api.sdk.models.retrieve(str(local_base)).id == str(local_base)
    assert name not in {m.id for m in other.sdk.models.list().data}
    with pytest.raises(openai.NotFoundError):
        other.sdk.models.retrieve(name)
    with pytest.raises(openai.NotFoundError):
        api.sdk.models.retrieve("ft:org/tiny:nobody:x:ftjob-unknown")


def test_checkpoints_that_retention_keeps_are_models(api, other, ft_model, settings, model_dir):
    """OpenAI's last three epoch checkpoints (steps 2-4) and the team's `keep_checkpoints`
    newest (2 by default: steps 4, 5) are `ft:...:ckpt-step-N` models; step 1, which the
    runner prunes at the end, is not one even before it does."""
    name, job_id = ft_model
    expected = [f"{name}:ckpt-step-{n}" for n in (5, 4, 3, 2)]
    listed = [m.id for m in api.sdk.models.list().data]
    assert [m for m in listed if m.startswith(f"{name}:")] == expected
    assert expected[0] not in {m.id for m in other.sdk.models.list().data}
    named = {c.fine_tuned_model_checkpoint for c in api.sdk.fine_tuning.jobs.checkpoints.list(job_id).data}
    assert set(expected) <= named and f"{name}:ckpt-step-1" in named  # step 1 is still stored, not yet pruned

    ck = api.sdk.models.retrieve(f"{name}:ckpt-step-3")
    assert (ck.id, ck.owned_by) == (f"{name}:ckpt-step-3", api.team_id)
    assert ck.model_dump()["fine_tuning_job_id"] == job_id and ck.model_dump()["parent"] == str(model_dir)
    for missing in (f"{name}:ckpt-step-1", f"{name}:ckpt-step-9", f"{name}:ckpt-step-03"):
        with pytest.raises(openai.NotFoundError):
            api.sdk.models.retrieve(missing)
    with pytest.raises(openai.NotFoundError):
        other.sdk.models.retrieve(f"{name}:ckpt-step-3")
    with pytest.raises(openai.NotFoundError):
        other.sdk.models.delete(f"{name}:ckpt-step-3")

    store = get_store(settings)
    gone = api.sdk.models.delete(f"{name}:ckpt-step-3")
    assert (gone.id, gone.deleted) == (f"{name}:ckpt-step-3", True)
    assert not store.exists(f"jobs/{job_id}/checkpoints/step-3/adapter_model.safetensors")
    assert store.exists(f"jobs/{job_id}/checkpoints/step-4/adapter_model.safetensors")
    steps = {c.step_number for c in api.sdk.fine_tuning.jobs.checkpoints.list(job_id).data}
    assert 3 not in steps and {1, 2, 4, 5} <= steps
    listed = {m.id for m in api.sdk.models.list().data}
    assert name in listed and f"{name}:ckpt-step-4" in listed and f"{name}:ckpt-step-3" not in listed
    with pytest.raises(openai.NotFoundError):
        api.sdk.models.delete(f"{name}:ckpt-step-3")


def test_deleting_a_fine_tuned_model_removes_its_artifacts(api, other, ft_model, settings, tmp_path, model_dir):
    name, job_id = ft_model
    store = get_store(settings)
    adapters = tmp_path / "adapters"
    with Session(get_engine_for(settings)) as s:
        assert name in models_catalog.export_adapters(s, store, adapters, "served-base", base_model=str(model_dir))
        assert models_catalog.export_adapters(s, store, tmp_path / "none", "served-base", base_model="other/base") == []
    exported = adapters / name
    config = json.loads((exported / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "served-base" and config["r"] == 8
    assert (exported / "adapter_model.safetensors").read_bytes() == b"weights"

    with pytest.raises(openai.NotFoundError):
        other.sdk.models.delete(name)
    with pytest.raises(openai.BadRequestError):
        api.sdk.models.delete(str(model_dir))  # a base model is the deployment's
    gone = api.sdk.models.delete(name)
    assert (gone.id, gone.deleted) == (name, True)
    assert not store.exists(f"jobs/{job_id}/artifacts/adapter/adapter_model.safetensors")
    assert not store.exists(f"jobs/{job_id}/checkpoints/step-2/adapter_model.safetensors")
    assert api.http.get(f"/v1/fine_tuning/jobs/{job_id}/artifacts").json()["data"] == []
    assert api.sdk.fine_tuning.jobs.checkpoints.list(job_id).data == []
    assert not any(m.id.startswith(name) for m in api.sdk.models.list().data)  # its checkpoint models too
    with pytest.raises(openai.NotFoundError):
        api.sdk.models.retrieve(name)
    with pytest.raises(openai.NotFoundError):
        api.sdk.models.delete(name)
    assert api.sdk.fine_tuning.jobs.retrieve(job_id).fine_tuned_model == name  # the job stays as history

    with Session(get_engine_for(settings)) as s:
        assert name not in models_catalog.export_adapters(s, store, adapters, "served-base")
    assert not exported.exists()


def get_engine_for(settings):
    from core.db import get_engine

    return get_engine(settings.database_url)


def test_only_exact_hub_ids_of_the_allowlist_are_listed(tmp_path):
    settings = Settings(embedded=True, model_allowlist="org/exact,org/*,meta-llama/", model_roots=str(tmp_path))
    (tmp_path / "no-config").mkdir()
    assert [(m.id, m.owned_by) for m in models_catalog.base_models(settings)] == [("org/exact", "org")]


def test_export_adapters_command_writes_what_vllm_loads(ft_model, settings_env, tmp_path, model_dir):
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    name, _job = ft_model
    run = subprocess.run(
        [sys.executable, "-m", "core.cli", "export-adapters", str(tmp_path / "adapters"), "--served-base", "org/tiny",
         "--base-model", str(model_dir)],
        cwd=REPO, env={**os.environ, **settings_env}, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr
    config = json.loads((tmp_path / "adapters" / name / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "org/tiny"  # what vLLM's resolver compares with its --model


def test_listing_costs_the_same_queries_however_many_models(api, ft_model, run_as_worker, model_dir, stack_engine, settings):
    """The jobs, their artifacts, their checkpoints (and the team): not a few queries per model."""
    from sqlalchemy import event

    def queries() -> tuple[int, int]:
        seen: list[str] = []
        listener = lambda *a: seen.append(a[2])  # noqa: E731 (before_cursor_execute's statement)
        event.listen(stack_engine, "before_cursor_execute", listener)
        try:
            with Session(stack_engine) as s:
                n = len(models_catalog.list_models(s, settings, api.team_id))
        finally:
            event.remove(stack_engine, "before_cursor_execute", listener)
        return n, len(seen)

    models_before, before = queries()
    for _ in range(3):
        job_id = api.job(str(model_dir), suffix="more").json()["id"]
        claim = run_as_worker(job_id)
        with Session(stack_engine) as s:
            key = f"jobs/{job_id}/artifacts/adapter.tar.gz"
            runs.record_artifact(s, job_id, claim.attempt, "adapter.tar.gz", 7, "0" * 64, key)
            runs.record_checkpoint(s, job_id, claim.attempt, 1, f"jobs/{job_id}/checkpoints/step-1", {})
            runs.finish(s, job_id, claim.attempt, JobStatus.SUCCEEDED, fine_tuned_model=f"ft:x:{api.team_id}:more:{job_id}")
            s.commit()
    models_after, after = queries()
    assert models_after == models_before + 6  # three fine-tuned models and a checkpoint model each
    assert after == before <= 5
