"""The models a team can use, as OpenAI's `/v1/models` lists them: the base models this
deployment allows, the team's fine-tuned models (`ft:...` ids, one per succeeded job
whose adapter is still stored), and their checkpoints that retention keeps
(`ft:...:ckpt-step-N`, as OpenAI offers the last three epoch checkpoints as usable models).

A fine-tuned model exists exactly as long as its artifacts do: `delete_model` removes the
adapter (and the job's checkpoints, which are models too) from the store and the database,
and the job itself stays as history, the way OpenAI keeps a job after its model is deleted.
`export_adapters` is the serving handoff: it lays the adapters out in the directory
structure vLLM's filesystem LoRA resolver loads from at request time.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from core.config import Settings
from core.errors import InvalidRequest, NotFound
from core.models import Artifact, Checkpoint, Job, Team, as_utc
from core.services.retention import split_checkpoints
from core.states import JobStatus

log = logging.getLogger(__name__)

FT_PREFIX = "ft:"
ADAPTER_DIR = "adapter/"  # artifact names of the PEFT adapter directory (core.training.artifacts)
ADAPTER_ARCHIVE = "adapter.tar.gz"
_CHECKPOINT_SUFFIX = re.compile(r"^(?P<model>.+):ckpt-step-(?P<step>[0-9]+)$")


def checkpoint_model_id(job: Job, step: int) -> str:
    """The model name of a job's checkpoint at `step`, OpenAI's `<ft model>:ckpt-step-N`
    (a job without a model name yet, e.g. still running, names it by base and job id)."""
    return f"{job.fine_tuned_model or f'{job.model}:{job.id}'}:ckpt-step-{step}"


@dataclass(frozen=True)
class CatalogModel:
    id: str
    created: int
    owned_by: str
    parent: str | None = None
    job_id: str | None = None
    adapter: dict[str, Any] | None = None


# --- base models ----------------------------------------------------------------------------


def _local_models(settings: Settings) -> list[CatalogModel]:
    """Directories with a config.json directly under a model root; their id is the absolute
    path, which is what a job's `model` takes for a local model."""
    found = []
    for root in settings.model_roots:
        root = Path(root).expanduser().resolve()
        if not root.is_dir():
            continue
        for d in sorted(root.iterdir()):
            if d.is_dir() and (d / "config.json").is_file():
                found.append(CatalogModel(id=str(d), created=int(d.stat().st_mtime), owned_by="system"))
    return found


def base_models(settings: Settings) -> list[CatalogModel]:
    """Exact hub ids of the allowlist (a prefix like `org/` or `org/*` names no one model)
    and the models inside the model roots."""
    hub = [
        CatalogModel(id=a, created=0, owned_by=a.split("/", 1)[0])
        for a in settings.model_allowlist if not a.endswith(("/", "*"))
    ]
    return hub + _local_models(settings)


# --- fine-tuned models ------------------------------------------------------------------------


def _has_artifacts():
    return exists().where(Artifact.job_id == Job.id)


def _fine_tuned_query(team_id: str):
    return select(Job).where(
        Job.team_id == team_id, Job.status == JobStatus.SUCCEEDED.value, Job.fine_tuned_model.is_not(None), _has_artifacts()
    )


def _adapter_info(arts: list[Artifact]) -> dict[str, Any]:
    archive = next((a for a in arts if a.name == ADAPTER_ARCHIVE), None)
    return {
        "files": sorted(a.name for a in arts if a.name.startswith(ADAPTER_DIR)),
        "archive": ADAPTER_ARCHIVE if archive else None,
        "sha256": archive.sha256 if archive else None,
        "bytes": archive.bytes if archive else None,
    }


def _fine_tuned(job: Job, arts: list[Artifact]) -> CatalogModel:
    created = job.finished_at or job.created_at
    return CatalogModel(
        id=job.fine_tuned_model, created=int(as_utc(created).timestamp()), owned_by=job.team_id, parent=job.model,
        job_id=job.id, adapter=_adapter_info(arts),
    )


def _by_job(session: Session, model, job_ids: list[str]) -> dict[str, list]:
    """Rows of `model` (Artifact, Checkpoint) of these jobs, grouped by job, in one query."""
    grouped: dict[str, list] = defaultdict(list)
    for row in session.scalars(select(model).where(model.job_id.in_(job_ids))) if job_ids else ():
        grouped[row.job_id].append(row)
    return grouped


def _kept_checkpoints(session: Session, job: Job) -> list[Checkpoint]:
    """The job's checkpoints that its team's retention policy keeps (core.services.retention),
    newest first: the same set whether or not the runner has pruned the others yet."""
    rows = session.scalars(select(Checkpoint).where(Checkpoint.job_id == job.id))
    return split_checkpoints(rows, session.get(Team, job.team_id))[0]


def _checkpoint_model(job: Job, ck: Checkpoint) -> CatalogModel:
    return CatalogModel(
        id=checkpoint_model_id(job, ck.step), created=int(as_utc(ck.created_at).timestamp()), owned_by=job.team_id,
        parent=job.model, job_id=job.id, adapter={"checkpoint_id": ck.id, "step_number": ck.step},
    )


def list_models(session: Session, settings: Settings, team_id: str) -> list[CatalogModel]:
    """Three queries however many models: the jobs, their artifacts, their checkpoints."""
    jobs = session.scalars(_fine_tuned_query(team_id).order_by(Job.id.desc())).all()
    ids = [j.id for j in jobs]
    arts, ckpts = _by_job(session, Artifact, ids), _by_job(session, Checkpoint, ids)
    team = session.get(Team, team_id)
    out = base_models(settings)
    for j in jobs:
        out.append(_fine_tuned(j, arts[j.id]))
        out.extend(_checkpoint_model(j, ck) for ck in split_checkpoints(ckpts[j.id], team)[0])
    return out


def _not_found(model_id: str) -> NotFound:
    return NotFound(f"The model {model_id!r} does not exist or you do not have access to it", param="model")


def _fine_tuned_job(session: Session, team_id: str, model_id: str) -> Job:
    job = session.scalars(_fine_tuned_query(team_id).where(Job.fine_tuned_model == model_id)).first()
    if job is None:
        raise _not_found(model_id)
    return job


def _checkpoint_of(session: Session, team_id: str, model_id: str) -> tuple[Job, Checkpoint] | None:
    """The (job, checkpoint) a `ft:...:ckpt-step-N` id names, if it is one that is listed;
    None otherwise (the caller then looks the id up as an `ft:` model name itself)."""
    m = _CHECKPOINT_SUFFIX.match(model_id)
    if m is None:
        return None
    job = session.scalars(_fine_tuned_query(team_id).where(Job.fine_tuned_model == m["model"])).first()
    kept = _kept_checkpoints(session, job) if job is not None else []
    ck = next((c for c in kept if checkpoint_model_id(job, c.step) == model_id), None)  # "step-02" names none
    return (job, ck) if ck is not None else None


def get_model(session: Session, settings: Settings, team_id: str, model_id: str) -> CatalogModel:
    if model_id.startswith(FT_PREFIX):
        found = _checkpoint_of(session, team_id, model_id)
        if found is not None:
            return _checkpoint_model(*found)
        job = _fine_tuned_job(session, team_id, model_id)
        return _fine_tuned(job, list(session.scalars(select(Artifact).where(Artifact.job_id == job.id))))
    for m in base_models(settings):
        if m.id == model_id:
            return m
    raise NotFound(f"The model {model_id!r} does not exist or you do not have access to it", param="model")


def delete_model(session: Session, store, team_id: str, model_id: str) -> Job:
    """Remove a fine-tuned model's adapter, artifacts and checkpoints (rows and stored
    objects); a checkpoint model (`...:ckpt-step-N`) removes that checkpoint alone. Base
    models are the deployment's, not a team's: refused."""
    if not model_id.startswith(FT_PREFIX):
        raise InvalidRequest(f"only fine-tuned models ({FT_PREFIX}...) can be deleted; {model_id!r} is a base model", param="model")
    found = _checkpoint_of(session, team_id, model_id)
    if found is not None:
        job, ck = found
        session.delete(ck)
        session.flush()
        store.delete_prefix(ck.storage_key)  # rows first, then bytes, as below
        return job
    job = _fine_tuned_job(session, team_id, model_id)
    for row in session.scalars(select(Artifact).where(Artifact.job_id == job.id)).all():
        session.delete(row)
    for row in session.scalars(select(Checkpoint).where(Checkpoint.job_id == job.id)).all():
        session.delete(row)
    session.flush()
    # Rows first, then bytes: if deleting objects fails, the model is already gone from the
    # API and the orphaned objects are harmless; the reverse would list a model without weights.
    store.delete_prefix(f"jobs/{job.id}/artifacts")
    store.delete_prefix(f"jobs/{job.id}/checkpoints")
    return job


# --- the serving handoff ----------------------------------------------------------------------


def export_adapters(session: Session, store, dest: Path, served_base: str, *, base_model: str | None = None) -> list[str]:
    """Mirror every fine-tuned model of `base_model` (default: all) into `dest/<ft id>/`, as
    vLLM's `lora_filesystem_resolver` expects: a directory named as the requested model,
    holding adapter_config.json whose `base_model_name_or_path` equals the name vLLM serves
    the base under (`served_base`). Directories of models that no longer exist are removed.
    Returns the model ids now exported."""
    dest.mkdir(parents=True, exist_ok=True)
    has_adapter = exists().where(Artifact.job_id == Job.id, Artifact.name == f"{ADAPTER_DIR}adapter_config.json")
    stmt = select(Job).where(Job.status == JobStatus.SUCCEEDED.value, Job.fine_tuned_model.is_not(None), has_adapter)
    if base_model is not None:
        stmt = stmt.where(Job.model == base_model)
    wanted: dict[str, str] = {j.fine_tuned_model: j.id for j in session.scalars(stmt)}
    for name, job_id in list(wanted.items()):
        target = dest / name
        if (target / "adapter_config.json").is_file():
            continue
        staging = dest / f".partial-{job_id}"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            store.download_dir(f"jobs/{job_id}/artifacts/adapter", staging)
        except NotFound:  # rows without objects (a store restored from an older backup): skip, keep the others
            log.warning("model %s: its adapter is missing from the store; not exported", name)
            del wanted[name]
            continue
        config_path = staging / "adapter_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["base_model_name_or_path"] = served_base
        config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
        target.parent.mkdir(parents=True, exist_ok=True)  # a hub base's "/" nests the name
        staging.rename(target)  # vLLM sees the whole adapter or none of it
    for config in list(dest.rglob("adapter_config.json")):
        name = config.parent.relative_to(dest).as_posix()
        if name.startswith(FT_PREFIX) and name not in wanted:
            shutil.rmtree(config.parent, ignore_errors=True)
    return sorted(wanted)
