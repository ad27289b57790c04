"""Which database errors a runner retries: lost connections yes, refused writes no."""

from __future__ import annotations

import psycopg
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from worker.runner import is_transient


def test_lost_connections_are_transient():
    assert is_transient(OperationalError("UPDATE jobs", {}, psycopg.OperationalError("server closed the connection")))
    # What psycopg says when the pool hands back a connection whose backend was terminated.
    broken = psycopg.ProgrammingError("can't change 'autocommit' now: connection in transaction status INERROR")
    assert is_transient(ProgrammingError("SELECT 1", {}, broken))


def test_refused_writes_are_not():
    assert not is_transient(IntegrityError("INSERT", {}, psycopg.errors.UniqueViolation("duplicate key")))
    assert not is_transient(ProgrammingError("SELECT nope", {}, psycopg.ProgrammingError("syntax error")))
    assert not is_transient(ValueError("not a database error"))
