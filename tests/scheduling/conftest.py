from __future__ import annotations

import shutil

import pytest
from sqlalchemy.orm import Session

from core.db import make_engine
from core.migrate import upgrade_head


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory):
    """One migrated SQLite file; each test gets a copy (cheaper than migrating each time)."""
    path = tmp_path_factory.mktemp("sqlite") / "template.db"
    upgrade_head(f"sqlite:///{path}")
    return path


@pytest.fixture(params=["postgresql", "sqlite"])
def any_db(request, tmp_path, sqlite_template):
    """The planner runs on both databases: LATERAL + advisory lock on PostgreSQL, a window
    function and no lock on SQLite (embedded)."""
    if request.param == "postgresql":
        yield request.getfixturevalue("pg_session")
        return
    path = tmp_path / "tuneforge.db"
    shutil.copy(sqlite_template, path)
    engine = make_engine(f"sqlite:///{path}")
    with Session(engine, expire_on_commit=False) as session:
        yield session
    engine.dispose()
