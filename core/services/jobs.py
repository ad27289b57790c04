"""Fine-tuning jobs as a team sees them: create (with every check that can be made before
a GPU is touched), list, retrieve, cancel / pause / resume, and the read side of a run
(events, checkpoints, metric series).

Every function takes the caller's team id; another team's job answers NotFound, exactly as
an unknown id does, so ids cannot be probed. Status changes go through set_job_status.
Nothing here sends broker messages: the API dispatches after its commit.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from sqlalchemy import Row, exists, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.config import Settings
from core.datafiles import detect_format, validation_rows
from core.errors import Conflict, IllegalTransition, InvalidRequest, NotFound, QuotaExceeded
from core.hubdata import REVISION, parse_hub_ref
from core.jobrequest import JobCreateRequest
from core.model_config import is_local
from core.models import Checkpoint, File, Job, JobEvent, Team
from core.services import fit, series
from core.services.files import get_file
from core.services.lifecycle import lock_job, set_job_status
from core.services.pagination import Page, paginate
from core.services import start_adapter
from core.spec import JobSpec, TemplateSpec, template_fields
from core.states import JobStatus

S = JobStatus
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
HUB_DATA_PREFIX = "hf://"
WAITING = (S.VALIDATING_FILES.value, S.QUEUED.value)


# --- checks -----------------------------------------------------------------------------


def check_model(settings: Settings, model: str, revision: str | None = None) -> None:
    """A model is a hub id the deployment allows (at a branch, tag or commit of that repo),
    or a directory inside a model root. Checked at create and again by the worker when an
    attempt starts, since the settings may have changed while the job waited.

    Paths are resolved (symlinks, `..`) before the root check, so a link inside a root that
    points elsewhere is refused like the outside path itself.
    """
    if is_local(model):
        if revision is not None:
            raise InvalidRequest("revision applies to hub models only, not to a local directory", param="revision")
        try:  # `~nobody/x` cannot be expanded (RuntimeError), a NUL cannot name a path (ValueError)
            resolved = Path(model.removeprefix("file://")).expanduser().resolve(strict=True)
        except (OSError, RuntimeError, ValueError):
            resolved = None
        roots = [Path(r).expanduser().resolve() for r in settings.model_roots]
        if resolved is None or not resolved.is_dir() or not any(resolved.is_relative_to(r) for r in roots):
            raise InvalidRequest(
                f"model {model!r} is not a directory inside an allowed model root of this server",
                param="model",
                code="model_not_allowed",
            )
        return
    if not HUB_ID.match(model) or ".." in model:
        raise InvalidRequest(
            f"model {model!r} is neither a hub id like 'owner/name' nor an absolute local directory",
            param="model",
            code="model_not_allowed",
        )
    allow = settings.model_allowlist
    if allow and not any(model == a or (a.endswith(("/", "*")) and model.startswith(a.rstrip("*"))) for a in allow):
        raise InvalidRequest(f"model {model!r} is not in this server's model allowlist", param="model", code="model_not_allowed")
    if revision is not None and not REVISION.match(revision):
        raise InvalidRequest(
            f"revision {revision[:200]!r} must be a branch, tag or commit of {model} (not a refs/... path such as a pull request)",
            param="revision",
        )


def check_model_use(settings: Settings, spec: dict) -> None:
    """What a job may load, by the server's current settings: the model (and revision) and
    whether its code may run. The one check both create and the worker (at attempt start) make."""
    check_model(settings, spec["model"], spec.get("revision"))
    if spec.get("trust_remote_code") and not settings.allow_trust_remote_code:
        raise InvalidRequest("trust_remote_code is not allowed on this server", param="trust_remote_code")


def _check_data(
    session: Session, settings: Settings, team_id: str, ref: str, param: str, template: TemplateSpec, method: str = "supervised"
) -> File | None:
    if ref.startswith(HUB_DATA_PREFIX):
        if not settings.allow_hub_datasets:
            raise InvalidRequest(f"{param}: hub datasets ({HUB_DATA_PREFIX}...) are not allowed on this server", param=param)
        try:
            parse_hub_ref(ref)
        except ValueError as e:
            raise InvalidRequest(f"{param}: {e}", param=param) from None
        return None  # columns unknown until the worker fetches it (and checks its rows like an upload)
    f = get_file(session, team_id, ref, param=param)
    check_method_data(f, method, param)
    check_template_columns(f, template)
    return f


def check_method_data(f: File, method: str, param: str) -> None:
    """DPO trains on preference rows and only on them; other methods never on them."""
    preference = detect_format([dict.fromkeys(f.columns)]) == "preference"
    if method == "dpo" and not preference:
        raise InvalidRequest(
            f"{param}: method 'dpo' needs preference rows (input, preferred_output, non_preferred_output); "
            f"file {f.id} has columns {f.columns}",
            param=param,
        )
    if method != "dpo" and preference:
        raise InvalidRequest(
            f"{param}: file {f.id} holds preference pairs; train on it with method {{type: 'dpo'}}", param=param
        )


def check_template_columns(f: File, template: TemplateSpec) -> None:
    """The template's {column}s must be columns of the file (checked on the stored column
    list, not by re-reading the file). Rows already in `messages` or prompt/completion form
    need no user/assistant template; a system template still reads the row."""
    kind = detect_format([dict.fromkeys(f.columns)])
    parts: list[tuple[str, str | None]] = [("template.system", template.system)]
    if kind == "template-needed" or (kind == "prompt_completion" and template.prompt is not None):
        if template.prompt is None:
            raise InvalidRequest(
                f"file {f.id} has neither 'messages' nor 'prompt'/'completion' columns (it has {f.columns}); "
                "set template.prompt and template.completion, e.g. '{document}' and '{summary}'",
                param="template.prompt",
            )
        parts = [("template.prompt", template.prompt), ("template.completion", template.completion), *parts]
    for param, fmt in parts:
        for col in template_fields(fmt or ""):
            if col not in f.columns:
                raise InvalidRequest(
                    f"{param} uses column '{col}', which file {f.id} does not have (columns: {f.columns})",
                    param=param,
                    code="column_not_found",
                )


def check_integrations(spec: JobSpec) -> None:
    """A W&B integration needs the `wandb` package (an optional extra, ~70 MB installed):
    refused here, at create, when this install lacks it, rather than failing after the queue.
    `find_spec` looks the package up without importing it (the API never loads wandb)."""
    for i, integration in enumerate(spec.integrations):
        if integration.type == "wandb" and importlib.util.find_spec("wandb") is None:
            raise InvalidRequest(
                "integrations: wandb is not installed on this server (install tuneforge[wandb])",
                param=f"integrations.{i}.type",
                code="integration_not_available",
            )


def check_request(session: Session, settings: Settings, team_id: str, request: JobCreateRequest) -> JobSpec:
    """Everything the API can check without a worker; used by create and by the dry run."""
    spec = request.to_spec()
    check_integrations(spec)
    check_model_use(settings, {"model": spec.model, "revision": spec.revision, "trust_remote_code": spec.trust_remote_code})
    train = _check_data(session, settings, team_id, spec.training_file, "training_file", spec.template, spec.method.type)
    if train is not None and not spec.validation_file and spec.validation_split > 0:
        if validation_rows(train.row_count, spec.validation_split) >= train.row_count:
            raise InvalidRequest(
                f"validation_split {spec.validation_split} of file {train.id}'s {train.row_count} rows leaves no training rows",
                param="validation_split",
            )
    if spec.validation_file:
        _check_data(session, settings, team_id, spec.validation_file, "validation_file", spec.template, spec.method.type)
    if spec.from_checkpoint is not None:
        start_adapter.resolve(session, team_id, spec.from_checkpoint, spec.model)
    return spec


# --- create / read ----------------------------------------------------------------------


def get_job(session: Session, team_id: str, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None or job.team_id != team_id:
        raise NotFound(f"No fine-tuning job with id {job_id!r}", param="fine_tuning_job_id")
    return job


def _by_idempotency_key(session: Session, team_id: str, key: str) -> Job | None:
    return session.scalars(select(Job).where(Job.team_id == team_id, Job.idempotency_key == key)).one_or_none()


def _replay(job: Job, spec: JobSpec) -> Job:
    if job.spec_hash != spec.hash():
        raise Conflict(
            "This Idempotency-Key was already used for a different job request", param="Idempotency-Key", code="idempotency_key_reused"
        )
    return job


def create_job(
    session: Session,
    settings: Settings,
    team_id: str,
    request: JobCreateRequest,
    *,
    idempotency_key: str | None = None,
) -> tuple[Job, bool]:
    """Returns (job, created). A retried request with the same Idempotency-Key returns the
    first job (created=False) instead of queueing twice. Caller commits, then dispatches.

    The job's fit plan (core.services.fit) is stored with it: `planned_gpu_memory_gb` keeps it
    off GPU workers too small for it; a job that fits no GPU worker of the pool is refused."""
    spec = check_request(session, settings, team_id, request)
    if idempotency_key:
        existing = _by_idempotency_key(session, team_id, idempotency_key)
        if existing is not None:
            return _replay(existing, spec), False
    # Planned before the quota's team-row lock: it may wait on the hub for config.json.
    plan = fit.plan_job(session, settings, spec)
    check_waiting_quota(session, team_id)
    job = Job(
        team_id=team_id,
        model=spec.model,
        training_file_id=spec.training_file,
        validation_file_id=spec.validation_file,
        spec=spec.model_dump(mode="json"),
        spec_hash=spec.hash(),
        suffix=spec.suffix,
        seed=spec.seed,
        metadata_=request.metadata,
        idempotency_key=idempotency_key,
        status=S.VALIDATING_FILES.value,
        priority=request.priority,
        gpus=spec.resources.gpus,
        min_gpu_memory_gb=spec.resources.min_gpu_memory_gb,
        plan=plan.as_dict(),
        planned_gpu_memory_gb=plan.planned_gpu_memory_gb,
        max_attempts=settings.max_attempts,
    )
    try:
        with session.begin_nested():
            session.add(job)
            session.flush()
    except IntegrityError:
        if not idempotency_key:
            raise
        # A concurrent retry with the same key won the insert.
        return _replay(_by_idempotency_key(session, team_id, idempotency_key), spec), False
    message = "Files validated; job queued"
    if plan.planned_gpu_memory_gb is not None:
        message += f" (fit plan: needs ~{plan.planned_gpu_memory_gb:.1f} GiB per GPU)"
    set_job_status(session, job.id, S.QUEUED, message=message, job=job)
    return job, True


def check_waiting_quota(session: Session, team_id: str) -> None:
    """Refuse one more waiting job over the team's max_queued_jobs. The team row stays
    locked until the caller commits, so concurrent creates and resumes of one team count
    one after another: 20 at once against a limit of 2 queue exactly 2 (PostgreSQL row
    lock; SQLite has a single writer anyway)."""
    limit = session.scalar(select(Team.max_queued_jobs).where(Team.id == team_id).with_for_update())
    if limit is None:
        return
    waiting = session.scalar(select(func.count()).where(Job.team_id == team_id, Job.status.in_(WAITING)))
    if waiting >= limit:
        raise QuotaExceeded(f"Your team already has {waiting} queued jobs (limit {limit}); wait for some to start")


def list_jobs(
    session: Session, team_id: str, *, after: str | None = None, limit: int = 20, metadata: dict[str, str] | None = None
) -> Page[Job]:
    """`metadata` filters as OpenAI's `metadata[k]=v` query does: every pair must match."""
    stmt = select(Job).where(Job.team_id == team_id)
    sqlite = session.get_bind().dialect.name == "sqlite"
    for key, value in (metadata or {}).items():
        stmt = stmt.where(_metadata_pair(key, value, sqlite))
    return paginate(session, stmt, Job.id, after=after, limit=limit)


def _metadata_pair(key: str, value: str, sqlite: bool):
    """jobs.metadata has `key` set to `value`. PostgreSQL binds the key (`->>`); SQLite's JSON
    path cannot quote every key (a `"` in it breaks `$."key"`), so there the pairs are read
    with json_each and the key compared as a value."""
    if not sqlite:
        return Job.metadata_[key].as_string() == value
    pairs = func.json_each(Job.metadata_).table_valued("key", "value").alias("pairs")
    return exists(select(1).select_from(pairs).where(pairs.c.key == key, pairs.c.value == value))


# --- user actions -----------------------------------------------------------------------


def _locked(session: Session, team_id: str, job_id: str) -> Job:
    get_job(session, team_id, job_id)
    return lock_job(session, job_id)


def _refuse(job: Job, action: str) -> IllegalTransition:
    return IllegalTransition(f"Job {job.id} is {job.status} and cannot be {action}", param="fine_tuning_job_id")


def cancel_job(session: Session, team_id: str, job_id: str) -> Job:
    """Waiting jobs are cancelled at once; a running one is asked to stop (the runner
    checkpoints, stops and records `cancelled`). Cancelling twice is not an error."""
    job = _locked(session, team_id, job_id)
    status = S(job.status)
    if status is S.CANCELLING:
        return job
    if status in (S.VALIDATING_FILES, S.QUEUED, S.PAUSED):
        return set_job_status(session, job.id, S.CANCELLED, message="Job cancelled by the user", job=job)
    if status in (S.RUNNING, S.PAUSING):
        return set_job_status(session, job.id, S.CANCELLING, message="Cancellation requested", job=job)
    raise _refuse(job, "cancelled")


def pause_job(session: Session, team_id: str, job_id: str) -> Job:
    """A queued job is parked at once; a running one checkpoints and stops (`pausing`)."""
    job = _locked(session, team_id, job_id)
    status = S(job.status)
    if status in (S.PAUSING, S.PAUSED):
        return job
    if status is S.QUEUED:
        return set_job_status(session, job.id, S.PAUSED, message="Job paused by the user", job=job)
    if status is S.RUNNING:
        return set_job_status(session, job.id, S.PAUSING, message="Pause requested", job=job)
    raise _refuse(job, "paused")


def resume_job(session: Session, team_id: str, job_id: str) -> Job:
    """paused -> queued; the caller dispatches it again after commit."""
    get_job(session, team_id, job_id)
    check_waiting_quota(session, team_id)  # team row first, then the job: one lock order for all
    job = lock_job(session, job_id)
    if job.status != S.PAUSED.value:
        raise _refuse(job, "resumed")
    return set_job_status(session, job.id, S.QUEUED, message="Job resumed by the user", job=job)


# --- the run, read side -----------------------------------------------------------------

EVENT_PREFIX = "ftevent-"


def event_id(ev: JobEvent) -> str:
    return f"{EVENT_PREFIX}{ev.id}"


def _event_cursor(after: str | None) -> int | None:
    if after is None:
        return None
    try:
        n = int(after.removeprefix(EVENT_PREFIX))
    except ValueError:
        n = -1
    if not 0 <= n < 2**63:  # event ids are BIGINTs: a 20-digit "id" is no event, not a database error
        raise InvalidRequest(f"after={after[:80]!r} is not an event id", param="after")
    return n


def list_events(
    session: Session, team_id: str, job_id: str, *, after: str | None = None, limit: int = 20, newest_first: bool = True
) -> Page[JobEvent]:
    """Newest first like OpenAI; `newest_first=False` suits a client tailing new events."""
    get_job(session, team_id, job_id)
    stmt = select(JobEvent).where(JobEvent.job_id == job_id)
    return paginate(session, stmt, JobEvent.id, after=_event_cursor(after), limit=limit, newest_first=newest_first, cursor=after)


def list_checkpoints(session: Session, team_id: str, job_id: str, *, after: str | None = None, limit: int = 10) -> Page[Checkpoint]:
    get_job(session, team_id, job_id)
    stmt = select(Checkpoint).where(Checkpoint.job_id == job_id)
    return paginate(session, stmt, Checkpoint.id, after=after, limit=limit)


MAX_POINTS = 10_000


def metric_series(
    session: Session,
    team_id: str,
    job_id: str,
    *,
    from_step: int | None = None,
    to_step: int | None = None,
    max_points: int = 500,
) -> list[Row]:
    if not 1 <= max_points <= MAX_POINTS:
        raise InvalidRequest(f"max_points must be between 1 and {MAX_POINTS}", param="max_points")
    if from_step is not None and to_step is not None and from_step > to_step:
        raise InvalidRequest("from_step must not exceed to_step", param="from_step")
    get_job(session, team_id, job_id)
    return series.sample(session, job_id, from_step=from_step, to_step=to_step, max_points=max_points)


# --- versions: what a client's cached copy is compared against (ETag), without rendering ----


def job_version(job: Job) -> tuple:
    """Changes whenever any column of the job row does: `updated_at` is bumped by every ORM
    and Core UPDATE of the row (its onupdate)."""
    return (job.id, job.updated_at.isoformat())


def events_version(session: Session, team_id: str, job_id: str) -> tuple:
    """Events are append-only: the newest id says whether a page can have changed."""
    get_job(session, team_id, job_id)
    return (job_id, session.scalar(select(func.max(JobEvent.id)).where(JobEvent.job_id == job_id)))


def series_version(session: Session, team_id: str, job_id: str) -> tuple:
    """The job's version: a metric write (runs.record_metrics) always updates the job row
    in the same transaction (step, latest_metrics), new steps and merged values alike, so
    no query of the series itself is needed. Any other writer of metric rows must do so too."""
    return job_version(get_job(session, team_id, job_id))
