"""`from_checkpoint`: start a job's LoRA adapter from another job's (an extension, as
Together offers), e.g. DPO on top of a supervised fine-tune.

The reference is a fine-tuning job id (its final adapter) or a checkpoint id (`ftckpt-...`,
the adapter at that step), of the same team and trained on the same base model. The API
checks it at create; the worker resolves it again when it fetches the job's inputs (the
job may have been deleted since) and downloads the adapter next to the data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.errors import InvalidRequest
from core.models import Artifact, Checkpoint, Job
from core.states import JobStatus

PARAM = "from_checkpoint"
ADAPTER_PREFIX = "adapter/"  # the final adapter's artifact names (core.training.artifacts.save_adapter)


@dataclass
class StartAdapter:
    """Where the adapter's files are: a checkpoint's storage prefix, or the job's adapter artifacts."""

    prefix: str | None = None
    files: dict[str, str] = field(default_factory=dict)  # relative name -> storage key


def resolve(session: Session, team_id: str, ref: str, model: str) -> StartAdapter:
    if ref.startswith("ftckpt-"):
        ckpt = session.get(Checkpoint, ref)
        job = session.get(Job, ckpt.job_id) if ckpt else None
        if ckpt is None or job is None or job.team_id != team_id:
            raise InvalidRequest(f"{PARAM}: no checkpoint with id {ref!r}", param=PARAM)
        _same_base(job, model)
        return StartAdapter(prefix=ckpt.storage_key)
    if ref.startswith("ftjob-"):
        job = session.get(Job, ref)
        if job is None or job.team_id != team_id:
            raise InvalidRequest(f"{PARAM}: no fine-tuning job with id {ref!r}", param=PARAM)
        if job.status != JobStatus.SUCCEEDED.value:
            raise InvalidRequest(
                f"{PARAM}: job {ref} is {job.status}; only a succeeded job's adapter can be started from "
                "(or name one of its checkpoints, ftckpt-...)",
                param=PARAM,
            )
        _same_base(job, model)
        rows = session.scalars(select(Artifact).where(Artifact.job_id == job.id, Artifact.name.startswith(ADAPTER_PREFIX)))
        files = {a.name[len(ADAPTER_PREFIX) :]: a.storage_key for a in rows}
        if "adapter_config.json" not in files:
            raise InvalidRequest(f"{PARAM}: job {ref} has no adapter artifact (it may have been deleted)", param=PARAM)
        return StartAdapter(files=files)
    raise InvalidRequest(f"{PARAM}: expected a fine-tuning job id (ftjob-...) or a checkpoint id (ftckpt-...), got {ref!r}", param=PARAM)


def _same_base(job: Job, model: str) -> None:
    if job.model != model:
        raise InvalidRequest(
            f"{PARAM}: {job.id} trained an adapter for {job.model!r}, not for this job's model {model!r}", param=PARAM
        )
