"""The Alembic history is one line, and `upgrade head` from empty gives exactly the schema
of core/models.py on both PostgreSQL and SQLite (the embedded default)."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect

import core.models  # noqa: F401
from core.db import Base, make_engine
from core.migrate import alembic_config, upgrade_head


def schema_diff(engine) -> list:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True, "render_as_batch": True})
        return compare_metadata(ctx, Base.metadata)


def test_single_head():
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    assert len(heads) == 1, f"several migration heads: {heads}; merge them"


def test_postgres_upgrade_matches_models(pg_url):
    engine = create_engine(pg_url)
    try:
        assert schema_diff(engine) == []
        assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_sqlite_upgrade_matches_models_and_downgrades(tmp_path):
    url = f"sqlite:///{tmp_path / 'sub' / 'tf.db'}"
    upgrade_head(url)  # also creates the missing directory
    engine = make_engine(url)
    try:
        assert schema_diff(engine) == []
        command.downgrade(alembic_config(url), "base")
        assert set(inspect(engine).get_table_names()) == {"alembic_version"}
        upgrade_head(url)
        assert schema_diff(engine) == []
    finally:
        engine.dispose()
