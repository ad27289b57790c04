"""Response bodies. Where OpenAI defines an object (file, fine_tuning.job, event,
checkpoint, list) the fields and their types are OpenAI's, so the official SDK parses
them; our extensions are extra fields, which the SDK keeps as attributes."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, Field, model_serializer
from sqlalchemy import Row

from core.models import Artifact, Checkpoint, File, Job, JobEvent, Metric, WebhookDelivery, WebhookEndpoint, Worker, as_utc
from core.services.jobs import event_id
from core.services.metric_names import openai_metrics
from core.services.models_catalog import CatalogModel, checkpoint_model_id
from core.services.scheduling import QueueInfo, queue_info
from core.spec import AUTO_BATCH_SIZE, Hyperparameters, JobSpec

T = TypeVar("T")
_DEFAULT_LR = Hyperparameters.model_fields["learning_rate"].default


def unix(dt: datetime | None) -> int | None:
    return int(as_utc(dt).timestamp()) if dt is not None else None


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """Every error, OpenAI's shape: {"error": {message, type, param, code}} (api.errors)."""

    error: ErrorDetail


class ListObject(BaseModel, Generic[T]):
    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None


def list_of(items: list[Any], has_more: bool = False) -> dict[str, Any]:
    """OpenAI's list; `first_id`/`last_id` are strings its schemas require (ListFilesResponse),
    so an empty page has "" rather than null."""
    ids = [i.get("id") if isinstance(i, dict) else getattr(i, "id", None) for i in items]
    return {"object": "list", "data": items, "has_more": has_more, "first_id": ids[0] if ids else "", "last_id": ids[-1] if ids else ""}


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str
    status_details: str | None = None
    expires_at: int | None = None
    # Extensions.
    format: str
    row_count: int
    columns: list[str]
    sha256: str

    @model_serializer(mode="wrap")
    def _leave_out_unset(self, handler: Any) -> dict[str, Any]:
        """OpenAI types `expires_at` and `status_details` as integer and string (not
        nullable): a file that never expires, or has nothing to report, leaves them out."""
        out = handler(self)
        for name in ("status_details", "expires_at"):
            if out.get(name) is None:
                out.pop(name, None)
        return out


def file_object(f: File) -> FileObject:
    return FileObject(
        id=f.id, bytes=f.bytes, created_at=unix(f.created_at), filename=f.filename, purpose=f.purpose, status=f.status,
        expires_at=unix(f.expires_at), format=f.format, row_count=f.row_count, columns=f.columns, sha256=f.sha256,
    )


class DeletedObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class FineTuningJob(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    finished_at: int | None
    model: str
    fine_tuned_model: str | None
    organization_id: str
    status: str  # OpenAI's six, plus pausing / paused / cancelling
    hyperparameters: dict[str, Any]
    method: dict[str, Any]
    training_file: str
    validation_file: str | None
    result_files: list[str]
    trained_tokens: int | None
    error: JobError | None
    seed: int
    suffix: str | None
    user_provided_suffix: str | None
    metadata: dict[str, str] | None
    estimated_finish: int | None
    integrations: list[dict[str, Any]]
    # Extensions.
    template: dict[str, Any]
    lora: dict[str, Any]
    quantization: dict[str, Any]
    evaluation: dict[str, Any]
    resources: dict[str, Any]
    validation_split: float
    priority: int
    phase: str | None
    attempt: int
    step: int | None
    total_steps: int | None
    latest_metrics: dict[str, Any] | None
    result: dict[str, Any] | None
    queue_position: int | None = None
    queue_reason: str | None = None
    estimated_start: int | None = None
    spec_hash: str
    # The fit plan made at create (core.services.fit): what one GPU needs, per live GPU kind
    # the micro-batch and checkpointing it would run with, or "unknown" and why.
    plan: dict[str, Any] | None = None


#: Each spec section's defaults, filled under what a row stores (a row written before a field
#: existed still shows it) -- computed once, so rendering a job never re-validates its spec.
_SECTION_DEFAULTS = {
    name: JobSpec.model_fields[name].default_factory().model_dump(mode="json")
    for name in ("template", "lora", "quantization", "hyperparameters", "evaluation", "resources")
}
_DEFAULT_VALIDATION_SPLIT = JobSpec.model_fields["validation_split"].default


def _section(spec: dict[str, Any], name: str) -> dict[str, Any]:
    return {**_SECTION_DEFAULTS[name], **(spec.get(name) or {})}


def _openai_hyperparameters(hp: dict[str, Any]) -> dict[str, Any]:
    if hp["batch_size"] == "auto":  # OpenAI shows the number a job runs with once it is set
        hp["batch_size"] = AUTO_BATCH_SIZE
    n = hp["n_epochs"]
    hp["n_epochs"] = int(n) if float(n).is_integer() else n
    hp["learning_rate_multiplier"] = hp["learning_rate"] / _DEFAULT_LR
    return hp


def _method(spec: dict[str, Any], hp: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's `method` object: a DPO job's hyperparameters carry its beta."""
    method = spec.get("method") or {}
    if method.get("type") == "dpo":
        return {"type": "dpo", "dpo": {"hyperparameters": {**hp, **(method.get("dpo") or {})}}}
    return {"type": "supervised", "supervised": {"hyperparameters": hp}}


def job_object(job: Job, queue: QueueInfo | None = None) -> FineTuningJob:
    """Built from the stored row as it is: the spec was validated when the job was created,
    and validating it again per row per poll would cost most of a list request (and turn a
    row written under older, looser rules into a 500)."""
    queue = queue or queue_info(job)  # the planner's stored columns: O(1) per job
    spec = job.spec or {}
    hp = _openai_hyperparameters(_section(spec, "hyperparameters"))
    err = job.error
    return FineTuningJob(
        id=job.id,
        created_at=unix(job.created_at),
        finished_at=unix(job.finished_at),
        model=job.model,
        fine_tuned_model=job.fine_tuned_model,
        organization_id=job.team_id,
        status=job.status,
        hyperparameters=hp,
        method=_method(spec, hp),
        training_file=job.training_file_id,
        validation_file=job.validation_file_id,
        result_files=job.result_files or [],
        trained_tokens=job.trained_tokens,
        error=JobError(code=str(err.get("code") or "error"), message=str(err.get("message", "")), param=err.get("param")) if err else None,
        seed=job.seed,
        suffix=job.suffix,
        user_provided_suffix=job.suffix,
        metadata=job.metadata_,
        estimated_finish=unix(job.estimated_finish),
        integrations=spec.get("integrations") or [],
        template=_section(spec, "template"),
        lora=_section(spec, "lora"),
        quantization=_section(spec, "quantization"),
        evaluation=_section(spec, "evaluation"),
        resources=_section(spec, "resources"),
        validation_split=spec.get("validation_split", _DEFAULT_VALIDATION_SPLIT),
        priority=job.priority,
        phase=job.phase,
        attempt=job.attempt,
        step=job.step,
        total_steps=job.total_steps,
        latest_metrics=job.latest_metrics,
        result=job.result,
        queue_position=queue.position if queue else None,
        queue_reason=queue.reason if queue else None,
        estimated_start=unix(queue.estimated_start) if queue else None,
        spec_hash=job.spec_hash,
        plan=job.plan,
    )


class JobEventObject(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: str
    message: str
    type: Literal["message", "metrics"]
    data: dict[str, Any]


#: Stored event kinds shown as OpenAI's `metrics` events; every other kind is a `message`.
METRICS_KINDS = ("metrics", "checkpoint")


def event_object(ev: JobEvent) -> JobEventObject:
    """OpenAI's event: `type` is `message` or `metrics`, `data` an object. Our finer kind
    (status, phase, checkpoint, ...) is `data.kind`; a checkpoint is a metrics event whose
    data carries `step`, `total_steps` and the metrics under OpenAI's names."""
    data = dict(ev.data or {})
    if ev.type in METRICS_KINDS:
        data = {**{k: v for k, v in data.items() if k != "metrics"}, **openai_metrics(data.get("metrics")), "step": data.get("step")}
        data = {k: v for k, v in data.items() if v is not None}
    data["kind"] = ev.type
    return JobEventObject(
        id=event_id(ev), created_at=unix(ev.created_at), level=ev.level, message=ev.message,
        type="metrics" if ev.type in METRICS_KINDS else "message", data=data,
    )


class CheckpointObject(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    step_number: int
    metrics: dict[str, Any]


def checkpoint_object(ck: Checkpoint, job: Job) -> CheckpointObject:
    return CheckpointObject(
        id=ck.id, created_at=unix(ck.created_at), fine_tuned_model_checkpoint=checkpoint_model_id(job, ck.step),
        fine_tuning_job_id=ck.job_id, step_number=ck.step, metrics={**openai_metrics(ck.metrics), "step": ck.step},
    )


class MetricPoint(BaseModel):
    step: int
    created_at: int
    values: dict[str, Any]


class MetricSeries(BaseModel):
    object: Literal["fine_tuning.job.metrics"] = "fine_tuning.job.metrics"
    fine_tuning_job_id: str
    data: list[MetricPoint]


def metric_point(m: Metric | Row) -> MetricPoint:
    """From a Metric, or a row of its step, created_at and values (core.services.series)."""
    return MetricPoint(step=m.step, created_at=unix(m.created_at), values=m.values)


class ArtifactObject(BaseModel):
    name: str
    bytes: int
    sha256: str
    created_at: int


def artifact_object(a: Artifact) -> ArtifactObject:
    return ArtifactObject(name=a.name, bytes=a.bytes, sha256=a.sha256, created_at=unix(a.created_at))


class SignedLink(BaseModel):
    url: str
    expires_at: int


class WorkerObject(BaseModel):
    id: str
    object: Literal["worker"] = "worker"
    hostname: str
    slots: int
    gpus: int
    gpu_name: str | None
    gpu_memory_gb: float | None
    running_job_ids: list[str] = Field(description="The caller's own jobs on this worker")
    running_jobs: int = Field(description="Jobs of every team running on this worker")
    active: bool
    started_at: int
    last_heartbeat: int


def worker_object(w: Worker, own_job_ids: list[str]) -> WorkerObject:
    return WorkerObject(
        id=w.id, hostname=w.hostname, slots=w.slots, gpus=w.gpus, gpu_name=w.gpu_name, gpu_memory_gb=w.gpu_memory_gb,
        running_job_ids=own_job_ids, running_jobs=len(w.running_job_ids or []), active=w.active, started_at=unix(w.started_at), last_heartbeat=unix(w.last_heartbeat),
    )


class ValidationReport(BaseModel):
    object: Literal["fine_tuning.job.validation"] = "fine_tuning.job.validation"
    valid: bool
    spec: dict[str, Any]
    spec_hash: str
    token_counts: dict[str, Any] | None
    warnings: list[str]
    # The fit plan (core.services.fit.validation_plan): status ("planned" | "unknown" |
    # "not_applicable") and reason, needed_gpu_memory_gb, total_tokens, optimizer_steps, and
    # per live GPU kind ("gpus") the micro-batch, accumulation, checkpointing, predicted peak,
    # required memory and estimated_seconds (null with estimate_reason before any measured run).
    plan: dict[str, Any] | None = None


# --- webhooks (extension) and models (OpenAI's model object) ----------------------------------


class WebhookCreateRequest(BaseModel):
    model_config = {"extra": "forbid"}

    url: str
    events: list[str] | None = None  # None: every event type
    description: str | None = Field(None, max_length=512)


class WebhookEndpointObject(BaseModel):
    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    url: str
    events: list[str] | None
    description: str | None
    created_at: int
    secret: str | None = None  # only in the response that created it


def webhook_endpoint_object(ep: WebhookEndpoint, *, with_secret: bool = False) -> WebhookEndpointObject:
    return WebhookEndpointObject(
        id=ep.id, url=ep.url, events=ep.events, description=ep.description, created_at=unix(ep.created_at),
        secret=ep.secret if with_secret else None,
    )


class WebhookDeliveryObject(BaseModel):
    id: str
    object: Literal["webhook_delivery"] = "webhook_delivery"
    event_id: str
    event_type: str
    status: str  # pending | delivered | failed
    attempts: int
    created_at: int
    last_attempt_at: int | None
    next_attempt_at: int | None
    delivered_at: int | None
    last_status_code: int | None
    last_error: str | None


def webhook_delivery_object(d: WebhookDelivery) -> WebhookDeliveryObject:
    return WebhookDeliveryObject(
        id=d.id, event_id=d.event_id, event_type=d.event_type, status=d.status, attempts=d.attempts,
        created_at=unix(d.created_at), last_attempt_at=unix(d.last_attempt_at),
        next_attempt_at=unix(d.next_attempt_at) if d.status == "pending" else None, delivered_at=unix(d.delivered_at),
        last_status_code=d.last_status_code, last_error=d.last_error,
    )


class DeletedResource(BaseModel):
    id: str
    object: str
    deleted: bool = True


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    # Extensions: a fine-tuned model's base, job and adapter.
    parent: str | None = None
    fine_tuning_job_id: str | None = None
    adapter: dict[str, Any] | None = None


def model_object(m: CatalogModel) -> ModelObject:
    return ModelObject(
        id=m.id, created=m.created, owned_by=m.owned_by, parent=m.parent, fine_tuning_job_id=m.job_id, adapter=m.adapter
    )
