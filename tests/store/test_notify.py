"""core.notify on a real PostgreSQL: delivered at commit, never for a rollback, fanned out to
many waiters through one connection, and a no-op on SQLite."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy.orm import Session

from core.db import make_engine
from core.notify import JOB_CHANGED, PLAN, Listener, notify


@pytest.fixture
def listener(pg_url):
    lst = Listener(pg_url, poll_seconds=0.1).start()
    assert lst.listening.wait(10), "listener never connected"
    yield lst
    lst.stop()


def test_delivered_at_commit_not_for_rollback(listener, pg_engine):
    got: list[str | None] = []
    arrived = threading.Event()

    def on_job(payload):
        got.append(payload)
        arrived.set()

    listener.subscribe(JOB_CHANGED, on_job)
    with Session(pg_engine) as session:
        notify(session, JOB_CHANGED, "ftjob-rolled-back")
        session.rollback()
        notify(session, JOB_CHANGED, "ftjob-kept")
        assert not arrived.wait(0.3), "delivered before commit"
        session.commit()
    assert arrived.wait(5)
    assert got == ["ftjob-kept"]


def test_waiter_matches_payload_and_channels_are_separate(listener, pg_engine):
    with listener.waiter(JOB_CHANGED, match=lambda p: p == "ftjob-a") as woke, listener.waiter(PLAN) as plan:
        with Session(pg_engine) as session:
            notify(session, JOB_CHANGED, "ftjob-b")
            session.commit()
        assert not woke.wait(0.5)
        assert not plan.is_set()
        with Session(pg_engine) as session:
            notify(session, JOB_CHANGED, "ftjob-a")
            session.commit()
        assert woke.wait(5)
        assert not plan.is_set()
    assert listener.subscriber_count == 0


def test_one_connection_fans_out_to_many_async_waiters(listener, pg_engine):
    async def main():
        waiters = [listener.async_waiter(JOB_CHANGED).__enter__() for _ in range(300)]
        try:
            tasks = [asyncio.create_task(w.wait(10)) for w in waiters]
            await asyncio.sleep(0.1)
            with Session(pg_engine) as session:
                notify(session, JOB_CHANGED, "ftjob-x")
                session.commit()
            return await asyncio.gather(*tasks)
        finally:
            for w in waiters:
                w.__exit__(None, None, None)

    # In a thread of its own: a session-scoped Playwright (tests/browser) may keep an event
    # loop running in the main thread, where asyncio.run() refuses to start another.
    with ThreadPoolExecutor(1) as pool:
        assert all(pool.submit(asyncio.run, main()).result(timeout=60))
    assert listener.subscriber_count == 0


def test_noop_on_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    engine = make_engine(url)
    with Session(engine) as session:
        notify(session, PLAN, "created")  # must not raise
        session.commit()
    lst = Listener(url).start()
    assert not lst.enabled and not lst.listening.is_set()
    lst.stop()
    engine.dispose()


def test_refuses_oversized_payload(pg_engine):
    with Session(pg_engine) as session, pytest.raises(ValueError):
        notify(session, PLAN, "x" * 8000)
