"""ORM models. Job keeps the denormalized current state (status, phase, latest metrics);
JobEvent and Metric are the append-only history behind it (Prefect / MLflow style)."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    column,
    text,
    true,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from core.db import Base


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(dt: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything we store is UTC."""
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def new_id(prefix: str) -> str:
    """Time-ordered ids (microsecond clock + randomness): sorting by id sorts by creation,
    which is what cursor pagination (`after=`) needs."""
    return f"{prefix}-{time.time_ns() // 1000:014x}{os.urandom(5).hex()}"


# Portable big-int autoincrement: BIGINT on PostgreSQL, INTEGER (rowid) on SQLite.
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")


def _tz() -> DateTime:
    return DateTime(timezone=True)


class Team(Base):
    __tablename__ = "teams"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("team"))
    name: Mapped[str] = mapped_column(String(200), unique=True)
    share: Mapped[float] = mapped_column(Float, default=1.0)  # fair-share weight
    max_running_jobs: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_queued_jobs: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Retention (core/services/retention.py): checkpoints of a finished job kept in the store.
    keep_checkpoints: Mapped[int] = mapped_column(Integer, default=2, server_default="2")
    keep_best_checkpoint: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    created_at: Mapped[datetime] = mapped_column(_tz(), default=utcnow)


class ApiKey(Base):
    """Only the SHA-256 of a key is stored; the prefix lets an operator tell keys apart."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("key"))
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), index=True)
    name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(_tz(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(_tz(), nullable=True)
    # Updated at most once a minute (core/services/auth.py): enough to spot unused keys.
    last_used_at: Mapped[datetime | None] = mapped_column(_tz(), nullable=True)

    team: Mapped[Team] = relationship()


class File(Base):
    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("file"))
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str] = mapped_column(String(512))
    purpose: Mapped[str] = mapped_column(String(32), default="fine-tune")
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    storage_key: Mapped[str] = mapped_column(String(1024))
    format: Mapped[str] = mapped_column(String(16))  # jsonl | csv | parquet
    row_count: Mapped[int] = mapped_column(Integer)
    columns: Mapped[list[str]] = mapped_column(JSON, default=list)
    status: Mapped[str] = mapped_column(String(16), default="processed")
    created_at: Mapped[datetime] = mapped_column(_tz(), default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(_tz(), nullable=True)
    # OpenAI's `expires_after`: past it the file is gone for the API, and the sweep deletes it
    # (core.services.retention.expired_files).
    expires_at: Mapped[datetime | None] = mapped_column(_tz(), nullable=True)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("team_id", "idempotency_key", name="uq_jobs_team_idempotency"),
        Index("ix_jobs_status_priority", "status", "priority", "created_at"),
        Index("ix_jobs_team_created", "team_id", "id"),
        # The planner's head-of-line read: each team's waiting jobs in dispatch order
        # (priority, then age), one short index range per team (core/services/planner.py).
        Index("ix_jobs_waiting_head", "team_id", "status", column("priority").desc(), "created_at", "id",
              postgresql_where=text("worker_id IS NULL"), sqlite_where=text("worker_id IS NULL")),
        # The jobs holding a slot right now (a few per worker), for the running-usage aggregate.
        Index("ix_jobs_held", "held_worker_id", postgresql_where=text("held_worker_id IS NOT NULL"),
              sqlite_where=text("held_worker_id IS NOT NULL")),
        Index("ix_jobs_finished_at", "finished_at"),
        # Measured throughput of finished runs by model and GPU kind: the time estimate of a
        # dry run (core.services.fit).
        Index("ix_jobs_throughput", "model", "gpu_name", "finished_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("ftjob"))
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    model: Mapped[str] = mapped_column(String(4096))
    training_file_id: Mapped[str] = mapped_column(String(4096))  # a file id, or an hf:// dataset reference
    validation_file_id: Mapped[str | None] = mapped_column(String(4096), nullable=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)  # JobSpec.model_dump(mode="json")
    spec_hash: Mapped[str] = mapped_column(String(32))
    suffix: Mapped[str | None] = mapped_column(String(64), nullable=True)
    seed: Mapped[int] = mapped_column(BigInteger, default=42)
    metadata_: Mapped[dict[str, str] | None] = mapped_column("metadata", JSON, nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), nullable=True)

    status: Mapped[str] = mapped_column(String(24), default="validating_files", index=True)
    phase: Mapped[str | None] = mapped_column(String(24), nullable=True)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    gpus: Mapped[int] = mapped_column(Integer, default=1)
    min_gpu_memory_gb: Mapped[float | None] = mapped_column(Float, nullable=True)
    # The fit plan made at create from the model's config (core.services.fit): what one GPU
    # needs at the smallest micro-batch. Placement skips GPU workers with less memory; the
    # client's own min_gpu_memory_gb, when given, is kept apart (it also rules out CPU workers).
    plan: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    planned_gpu_memory_gb: Mapped[float | None] = mapped_column(Float, nullable=True)
    # What the last run measured: the GPU kind it ran on and its mean training tokens/s.
    gpu_name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    tokens_per_second: Mapped[float | None] = mapped_column(Float, nullable=True)

    # Claim / lease / fencing: `attempt` is the fencing token every runner write carries.
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    worker_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(_tz(), nullable=True)
    dispatched_at: Mapped[datetime | None] = mapped_column(_tz(), nullable=True)

    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    fine_tuned_model: Mapped[str | None] = mapped_column(String(512), nullable=True)
    trained_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    total_steps: Mapped[int | None] = mapped_column(Integer, nullable=True)
    latest_metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # final eval metrics
    # OpenAI's `result_files`: ids of the fine-tune-results files written at success (core.services.results).
    result_files: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)

    created_at: Mapped[datetime] = mapped_column(_tz(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(_tz(), default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(_tz(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(_tz(), nullable=True)
    estimated_finish: Mapped[datetime | None] = mapped_column(_tz(), nullable=True)

    # The slot this job is counted against in Worker.used_slots (core/services/slot_accounting.py
    # keeps these equal to what the status/worker_id say, so counts move with every write).
    held_worker_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    held_slots: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Written by the planner each tick for a waiting job (read by GET, never recomputed there).
    queue_position: Mapped[int | None] = mapped_column(Integer, nullable=True)
    queue_reason: Mapped[str | None] = mapped_column(String(200), nullable=True)
    estimated_start: Mapped[datetime | None] = mapped_column(_tz(), nullable=True)

    team: Mapped[Team] = relationship()


class JobEvent(Base):
    __tablename__ = "job_events"
    __table_args__ = (Index("ix_job_events_job_id_id", "job_id", "id"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    level: Mapped[str] = mapped_column(String(8), default="info")  # info | warn | error
    type: Mapped[str] = mapped_column(String(32), default="message")  # status | phase | checkpoint | message | ...
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(_tz(), default=utcnow)


class Metric(Base):
    """One row per logged step; a resumed attempt overwrites the steps it replays.

    `seq` is the row's 0-based position in its job's series (its rank by step), kept as
    points arrive (core.services.series) so a downsampled read fetches only the positions
    it shows, by index, instead of ranking every step of the job."""

    __tablename__ = "metrics"
    __table_args__ = (Index("ix_metrics_job_seq", "job_id", "seq"),)

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    values: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(_tz(), default=utcnow)


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("job_id", "step", name="uq_checkpoints_job_step"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("ftckpt"))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    spec_hash: Mapped[str] = mapped_column(String(32))
    storage_key: Mapped[str] = mapped_column(String(1024))
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(_tz(), default=utcnow)


class Artifact(Base):
    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("job_id", "name", name="uq_artifacts_job_name"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(512))
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    storage_key: Mapped[str] = mapped_column(String(1024))
    created_at: Mapped[datetime] = mapped_column(_tz(), default=utcnow)


class Worker(Base):
    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)  # hostname:pid
    hostname: Mapped[str] = mapped_column(String(255))
    slots: Mapped[int] = mapped_column(Integer, default=1)
    gpus: Mapped[int] = mapped_column(Integer, default=0)
    gpu_name: Mapped[str | None] = mapped_column(String(255), nullable=True)
    gpu_memory_gb: Mapped[float | None] = mapped_column(Float, nullable=True)
    running_job_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    started_at: Mapped[datetime] = mapped_column(_tz(), default=utcnow)
    last_heartbeat: Mapped[datetime] = mapped_column(_tz(), default=utcnow)
    # Slots held by jobs dispatched to or running on this worker; maintained as jobs are
    # dispatched, start and end (core/services/slot_accounting.py), so the planner reads
    # free slots without loading running jobs.
    used_slots: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class WebhookEndpoint(Base):
    """A team's webhook receiver. The secret is kept as given (Standard Webhooks signs with
    HMAC, which needs the key itself, not a hash of it); the API shows it only at creation."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("wh"))
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(String(2048))
    secret: Mapped[str] = mapped_column(String(128))
    events: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)  # None: every event type
    description: Mapped[str | None] = mapped_column(String(512), nullable=True)
    created_at: Mapped[datetime] = mapped_column(_tz(), default=utcnow)


class WebhookDelivery(Base):
    """The outbox: one row per (event, endpoint), inserted in the transaction that made the
    change, so a rolled-back change sends nothing and a committed one survives any crash.
    Worker-side delivery loops claim due rows (`next_attempt_at`), send, and record the
    outcome here; the rows are also the endpoint's delivery log."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_endpoint_id_id", "endpoint_id", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("whdel"))
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    event_id: Mapped[str] = mapped_column(String(40))  # the `webhook-id` header: same on every retry
    event_type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[str] = mapped_column(Text)  # the exact body, so every attempt sends the same bytes
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(_tz(), default=utcnow)
    last_attempt_at: Mapped[datetime | None] = mapped_column(_tz(), nullable=True)
    last_status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(_tz(), default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(_tz(), nullable=True)


class TeamUsage(Base):
    """Slot-seconds of finished jobs per team and hour (the fair-share window is a sum of
    the last 24 rows of a team), added when a job ends instead of re-read from job rows."""

    __tablename__ = "team_usage"

    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), primary_key=True)
    bucket: Mapped[datetime] = mapped_column(_tz(), primary_key=True)  # start of the hour (UTC)
    slot_seconds: Mapped[float] = mapped_column(Float, default=0.0)


# Registers the ORM hooks that keep Worker.used_slots and TeamUsage in step with job rows.
import core.services.slot_accounting  # noqa: E402, F401
