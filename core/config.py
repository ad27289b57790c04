"""Settings: the one place every environment variable (prefix TUNEFORGE_) is read.

Plain URLs are accepted and normalised to the driver we use (`postgresql://` becomes
`postgresql+psycopg://`), so operators can paste what their database gives them.
A missing or placeholder secret refuses to start (the embedded mode generates its own):
download links are signed with it, and a guessable key would let anyone fetch any artifact.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator, model_validator
from typing import Annotated

from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

FILESYSTEM_BROKER = "filesystem://"  # kombu's server-less transport, used by the embedded mode
PLACEHOLDER_SECRETS = {"", "changeme", "change-me", "secret", "dev", "please-change", "tuneforge"}


class DataLimitSettings(BaseSettings):
    """What one training data file may hold (core.datafiles.Limits). A class of its own
    because the training process, which is given no secrets, must apply the same limits
    as the API did at upload; Settings has these fields too (it inherits them)."""

    model_config = SettingsConfigDict(env_prefix="TUNEFORGE_", env_file=None, extra="ignore")

    max_upload_bytes: int = Field(512 * 1024 * 1024, ge=1, description="Largest upload (also what a Parquet file may decode to)")
    max_upload_rows: int = Field(5_000_000, ge=1)
    max_row_bytes: int = Field(4 * 1024 * 1024, ge=1, description="Largest row of a data file (sum of its values)")
    max_cell_bytes: int = Field(1024 * 1024, ge=1, description="Largest single value (CSV field, JSON or Parquet string)")

    @property
    def data_limits(self):
        """The row and size limits every reader of training data applies (API and worker)."""
        from core.datafiles import Limits

        return Limits(
            max_rows=self.max_upload_rows, max_row_bytes=self.max_row_bytes,
            max_cell_bytes=self.max_cell_bytes, max_decoded_bytes=self.max_upload_bytes,
        )


class Settings(DataLimitSettings):
    model_config = SettingsConfigDict(env_prefix="TUNEFORGE_", env_file=None, extra="ignore")

    embedded: bool = Field(False, description="Single-machine mode started by `tuneforge up`")
    home: Path = Field(Path(".tuneforge"), description="State directory for the embedded mode")

    database_url: str = "sqlite:///.tuneforge/tuneforge.db"
    broker_url: str = "redis://127.0.0.1:6379/0"
    queue: str = Field("tuneforge", description="Celery queue the API sends jobs to and workers consume")
    result_backend: str = Field("", description="Celery result backend (dry runs); empty = the broker when it is Redis")
    artifacts_url: str = Field("file://.tuneforge/artifacts", description="file://dir or s3://bucket/prefix")
    # S3 / MinIO. Each is optional: unset values fall back to boto3's own chain (AWS_* env, ~/.aws, instance role).
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint the services talk to, e.g. http://minio:9000")
    s3_public_endpoint_url: str | None = Field(
        None, description="Endpoint written into presigned URLs when clients reach S3 by another address than the services"
    )
    s3_region: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    secret_key: str = ""

    public_url: str = Field("http://127.0.0.1:8000", description="Base URL used in signed links")
    signed_url_ttl_seconds: int = Field(3600, ge=1)

    # What a job may point at (the deployment's choice, not the client's).
    model_roots: Annotated[list[Path], NoDecode] = Field(default_factory=list, description="Local model dirs allowed")
    model_allowlist: Annotated[list[str], NoDecode] = Field(default_factory=list, description="Hub ids/prefixes allowed; empty = any")
    allow_hub_datasets: bool = False
    hub_cache_dir: Path | None = Field(None, description="Cache of hub datasets a worker fetches; unset = Hugging Face's own (HF_HOME)")
    allow_trust_remote_code: bool = False

    max_request_bytes: int = Field(1024 * 1024, ge=1, description="Largest request body outside uploads (job specs)")
    dry_run_timeout_seconds: float = Field(
        20.0, gt=0, description="How long POST /v1/fine_tuning/jobs/validate waits for a worker's token counts"
    )

    # Runner behaviour.
    lease_seconds: int = Field(60, ge=5)
    heartbeat_seconds: float = Field(5.0, gt=0)
    max_attempts: int = Field(3, ge=1)
    schedule_interval_seconds: float = Field(1.0, gt=0, description="How often each worker runs the scheduler")
    dispatch_timeout_seconds: float = Field(
        30.0, gt=0, description="A dispatched job not claimed within this is re-dispatched (its message was lost)"
    )
    worker_timeout_seconds: float = Field(
        30.0, gt=0, description="A worker silent for longer is not scheduled on (its leases expire separately)"
    )
    worker_slots: int = Field(1, ge=1)

    # Webhook delivery (worker/webhooks.py): how long one POST may take, how long an event is
    # retried, the first backoff (doubling up to an hour), and how often each worker looks.
    webhook_timeout_seconds: float = Field(5.0, gt=0, description="Timeout of one webhook POST")
    webhook_allow_private_targets: bool = Field(
        False, description="Let webhooks reach loopback, private and link-local addresses (receivers on your own "
        "network); off, they reach public addresses only (core/egress.py: no SSRF into the deployment)"
    )
    webhook_retry_seconds: float = Field(86400.0, gt=0, description="How long a webhook event is retried")
    webhook_backoff_seconds: float = Field(5.0, gt=0, description="First retry delay; doubles per failed attempt")
    webhook_poll_seconds: float = Field(1.0, gt=0, description="How often each worker looks for due webhook deliveries")
    webhook_log_retention_seconds: float = Field(
        30 * 86400.0, gt=0, description="How long finished webhook deliveries stay in the delivery log"
    )
    work_dir: Path = Field(Path(".tuneforge/work"), description="Scratch space for running jobs")
    model_cache: Path | None = Field(
        None,
        description="The worker host's one hub-model cache (huggingface_hub layout; jobs lock per model so a "
        "model is fetched once); unset = huggingface_hub's default (HF_HUB_CACHE)",
    )

    # Retention and housekeeping (core/services/retention.py).
    event_retention_days: int | None = Field(
        None, ge=1, description="Delete events (except status changes) and metric points of jobs finished this long ago; unset = keep"
    )
    maintenance_interval_seconds: float = Field(
        300.0, gt=0, description="How often each worker sweeps stale work dirs (and prunes history when enabled)"
    )

    # Prometheus /metrics: on the API port for anyone (default), behind a bearer token, or
    # only on a port of its own (then absent from the API port).
    metrics_token: str = Field("", description="When set, GET /metrics needs 'Authorization: Bearer <token>'")
    metrics_port: int | None = Field(None, ge=1, le=65535, description="Serve /metrics on this port instead of the API's")
    metrics_host: str = Field("0.0.0.0", description="Interface of the separate metrics port")

    @property
    def result_backend_url(self) -> str | None:
        """Where a worker's dry-run answer goes; API and worker must agree, so both read this."""
        if self.result_backend:
            return self.result_backend
        if self.broker_url.startswith(FILESYSTEM_BROKER):
            return "file://" + str(self.broker_folder / "results")
        return self.broker_url if self.broker_url.startswith(("redis://", "rediss://")) else None

    @property
    def broker_folder(self) -> Path:
        """The directory of the server-less `filesystem://[/abs/dir]` broker (embedded mode);
        without a path it is <home>/broker."""
        path = self.broker_url.removeprefix(FILESYSTEM_BROKER)
        return Path(path).resolve() if path else (self.home / "broker").resolve()

    @property
    def broker_transport_options(self) -> dict:
        """Celery `broker_transport_options` for broker_url; the API's sender and the worker
        both take them from here, so they read and write the same queues."""
        if not self.broker_url.startswith(FILESYSTEM_BROKER):
            return {}
        folder = self.broker_folder
        return {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "control_folder": str(folder / "control"),
            "processed_folder": str(folder / "processed"),
            "store_processed": False,
        }

    def ensure_broker_folders(self) -> None:
        """The filesystem transport does not create its folders; both sides call this."""
        for key in ("data_folder_in", "control_folder"):
            if key in self.broker_transport_options:
                Path(self.broker_transport_options[key]).mkdir(parents=True, exist_ok=True)
        if self.broker_url.startswith(FILESYSTEM_BROKER):
            (self.broker_folder / "results").mkdir(parents=True, exist_ok=True)

    @field_validator("model_roots", "model_allowlist", mode="before")
    @classmethod
    def _split_list(cls, v):
        if isinstance(v, str):
            if v.strip().startswith("["):
                import json

                return json.loads(v)
            return [p for p in (x.strip() for x in v.replace(":", ",").split(",")) if p] if v else []
        return v

    @field_validator("database_url")
    @classmethod
    def _driver(cls, v: str) -> str:
        for plain in ("postgresql://", "postgres://"):
            if v.startswith(plain):
                return "postgresql+psycopg://" + v[len(plain):]
        return v

    @model_validator(mode="after")
    def _secret_required(self) -> Settings:
        """A secret someone typed (a placeholder, a short word) is refused in every mode: the
        embedded mode generates a long random one into <home>/secret_key and may only run
        without any (nothing is signed until `tuneforge up` has made it)."""
        secret = self.secret_key.strip()
        if self.embedded and not secret:
            return self
        if secret.lower() in PLACEHOLDER_SECRETS:
            raise ValueError(
                "TUNEFORGE_SECRET_KEY is missing or a placeholder; set a long random value "
                "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
                + ("; or unset it and `tuneforge up` generates one" if self.embedded else "")
            )
        if len(secret) < 16:
            raise ValueError("TUNEFORGE_SECRET_KEY must be at least 16 characters")
        return self


@lru_cache
def get_settings() -> Settings:
    return Settings()
