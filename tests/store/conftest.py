"""Store tests run on both databases the service supports: PostgreSQL (deployments) and
SQLite (the embedded default). `db_session` is parametrized over the two (tests/conftest.py
`any_db`)."""

from __future__ import annotations

import pytest


@pytest.fixture
def db_session(any_db):
    return any_db
