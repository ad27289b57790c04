"""Run the Alembic migrations from code (tests, `tuneforge up`, container start).

The repo's alembic.ini is the single configuration; this only points it at a URL.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

ALEMBIC_INI = Path(__file__).resolve().parents[1] / "alembic.ini"


def alembic_config(url: str | None = None) -> Config:
    cfg = Config(str(ALEMBIC_INI))
    cfg.attributes["configure_logger"] = False
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade_head(url: str | None = None) -> None:
    """Bring the database at `url` (default: Settings.database_url) to the newest revision."""
    command.upgrade(alembic_config(url), "head")
