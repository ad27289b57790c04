"""Settings: the one place every environment variable (prefix TUNEFORGE_) is read.

Plain URLs are accepted and normalised to the driver we use (`postgresql://` becomes
`postgresql+psycopg://`), so operators can paste what their database gives them.
Outside the embedded mode a missing or placeholder secret refuses to start: download
links are signed with it, and a guessable key would let anyone fetch any artifact.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator, model_validator
from typing import Annotated

from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PLACEHOLDER_SECRETS = {"", "changeme", "change-me", "secret", "dev", "please-change", "tuneforge"}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TUNEFORGE_", env_file=None, extra="ignore")

    embedded: bool = Field(False, description="Single-machine mode started by `tuneforge up`")
    home: Path = Field(Path(".tuneforge"), description="State directory for the embedded mode")

    database_url: str = "sqlite:///.tuneforge/tuneforge.db"
    broker_url: str = "redis://127.0.0.1:6379/0"
    artifacts_url: str = "file://.tuneforge/artifacts"
    secret_key: str = ""

    public_url: str = Field("http://127.0.0.1:8000", description="Base URL used in signed links")
    signed_url_ttl_seconds: int = Field(3600, ge=1)

    # What a job may point at (the deployment's choice, not the client's).
    model_roots: Annotated[list[Path], NoDecode] = Field(default_factory=list, description="Local model dirs allowed")
    model_allowlist: Annotated[list[str], NoDecode] = Field(default_factory=list, description="Hub ids/prefixes allowed; empty = any")
    allow_hub_datasets: bool = False
    allow_trust_remote_code: bool = False

    max_upload_bytes: int = Field(512 * 1024 * 1024, ge=1)
    max_upload_rows: int = Field(5_000_000, ge=1)

    # Runner behaviour.
    lease_seconds: int = Field(60, ge=5)
    heartbeat_seconds: float = Field(5.0, gt=0)
    max_attempts: int = Field(3, ge=1)
    worker_slots: int = Field(1, ge=1)
    work_dir: Path = Field(Path(".tuneforge/work"), description="Scratch space for running jobs")

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
        if not self.embedded and self.secret_key.strip().lower() in PLACEHOLDER_SECRETS:
            raise ValueError(
                "TUNEFORGE_SECRET_KEY is missing or a placeholder; set a long random value "
                "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
            )
        if len(self.secret_key) < 16 and not self.embedded:
            raise ValueError("TUNEFORGE_SECRET_KEY must be at least 16 characters")
        return self


@lru_cache
def get_settings() -> Settings:
    return Settings()
