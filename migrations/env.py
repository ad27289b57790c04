"""Alembic environment: one schema for PostgreSQL and SQLite.

The URL comes from `sqlalchemy.url` when a caller set it on the Config (tests, `core.migrate`),
else from Settings (TUNEFORGE_DATABASE_URL). `render_as_batch` makes ALTERs work on SQLite,
which cannot alter tables in place; batch mode recreates the table instead.
"""

from __future__ import annotations

from logging.config import fileConfig
from pathlib import Path

from alembic import context

import core.models  # noqa: F401  (registers every table on Base.metadata)
from core.db import Base, make_engine

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from core.config import get_settings

    return get_settings().database_url


def _ensure_sqlite_dir(url: str) -> None:
    """The embedded default lives under .tuneforge/, which may not exist on a first run."""
    if url.startswith("sqlite:///") and ":memory:" not in url:
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)


def _configure(**kwargs) -> None:
    context.configure(target_metadata=target_metadata, render_as_batch=True, compare_type=True, **kwargs)


def run_migrations_offline() -> None:
    _configure(url=_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = _url()
    _ensure_sqlite_dir(url)
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            _configure(connection=connection)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
