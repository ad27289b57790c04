"""SSE streams on the live server: hundreds open hold no database connection (another team's
GET still answers at once), one runner commit reaches them all through LISTEN/NOTIFY, and
every message has an id a reconnecting client resumes from (Last-Event-ID)."""

from __future__ import annotations

import asyncio
import time

import httpx
from sqlalchemy import text
from sqlalchemy.orm import Session

from api.streams import SAFETY_NET_SECONDS
from core.services import runs
from core.states import JobStatus

N_STREAMS = 200


def parse_sse(lines) -> list[dict]:
    """SSE wire format -> [{"event", "id", "data"}]; comment lines (pings) are skipped."""
    out, cur = [], {}
    for line in lines:
        if not line:
            if cur:
                out.append(cur)
            cur = {}
        elif not line.startswith(":"):
            field, _, value = line.partition(":")
            cur[field] = value.removeprefix(" ")
    return out


def read_stream(api, jid: str, last_event_id: str | None = None) -> list[dict]:
    headers = {"Last-Event-ID": last_event_id} if last_event_id is not None else {}
    with api.http.stream("GET", f"/v1/fine_tuning/jobs/{jid}/stream", headers=headers, timeout=20) as r:
        assert r.status_code == 200
        return parse_sse(r.iter_lines())


def idle_in_transaction(stack_engine) -> int:
    with stack_engine.connect() as conn:
        return conn.scalar(text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state LIKE 'idle in transaction%'"
        ))


def test_open_streams_hold_no_connection_and_all_hear_one_event(api, other, model_dir, run_as_worker, stack_engine):
    jid = api.job(str(model_dir)).json()["id"]
    claim = run_as_worker(jid)
    assert SAFETY_NET_SECONDS >= 10  # so a fast delivery below can only be the notification

    async def main():
        opened, heard = asyncio.Event(), asyncio.Event()
        ready: set[int] = set()
        got_at: dict[int, float] = {}
        limits = httpx.Limits(max_connections=N_STREAMS + 10)
        headers = {"Authorization": f"Bearer {api.key}"}
        async with httpx.AsyncClient(base_url=api.base, headers=headers, limits=limits, timeout=60) as client:

            async def follow(i: int) -> None:
                async with client.stream("GET", f"/v1/fine_tuning/jobs/{jid}/stream") as r:
                    assert r.status_code == 200
                    async for line in r.aiter_lines():
                        if line.startswith("event: status"):
                            ready.add(i)
                            if len(ready) == N_STREAMS:
                                opened.set()
                        elif line.startswith("data:") and "the news" in line:
                            got_at[i] = time.perf_counter()
                            if len(got_at) == N_STREAMS:
                                heard.set()
                            return

            tasks = [asyncio.create_task(follow(i)) for i in range(N_STREAMS)]
            try:
                await asyncio.wait_for(opened.wait(), 60)
                # All streams are open and waiting: none holds a pooled connection...
                assert await asyncio.to_thread(idle_in_transaction, stack_engine) == 0
                # ...so another team's plain GET answers at once.
                async with httpx.AsyncClient(base_url=api.base, headers={"Authorization": f"Bearer {other.key}"}) as o:
                    t0 = time.perf_counter()
                    r = await o.get("/v1/fine_tuning/jobs", timeout=5)
                    get_seconds = time.perf_counter() - t0
                assert r.status_code == 200 and get_seconds < 1.0, get_seconds

                def write_event() -> float:
                    with Session(stack_engine) as s:
                        runs.record_event(s, jid, claim.attempt, "info", "the news")
                        s.commit()
                    return time.perf_counter()

                committed = await asyncio.to_thread(write_event)
                await asyncio.wait_for(heard.wait(), SAFETY_NET_SECONDS - 5)
                return max(got_at.values()) - committed
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    fan_out = asyncio.run(main())
    assert fan_out < 5.0, fan_out  # 1 s is the benchmark's target; this machine is shared


def test_every_message_has_an_id_and_last_event_id_resumes(api, model_dir, run_as_worker, stack_engine):
    jid = api.job(str(model_dir)).json()["id"]
    claim = run_as_worker(jid)
    with Session(stack_engine) as s:
        for step in (1, 2, 3):
            runs.record_metrics(s, jid, claim.attempt, step, {"train_loss": 1.0 / step})
        runs.record_event(s, jid, claim.attempt, "info", "halfway")
        runs.finish(s, jid, claim.attempt, JobStatus.SUCCEEDED)
        s.commit()

    full = read_stream(api, jid)
    assert [m["event"] for m in full].count("metrics") == 3 and full[-1]["event"] == "status"
    assert all(m.get("id") for m in full)
    events = [i for i, m in enumerate(full) if m["event"] == "event"]
    assert len(events) >= 3
    cut = events[1]
    resumed = read_stream(api, jid, last_event_id=full[cut]["id"])
    assert resumed == full[cut + 1:]
    # Resuming from the very end sends only the closing status.
    assert [m["event"] for m in read_stream(api, jid, last_event_id=full[-1]["id"])] == ["status"]

    bad = api.http.get(f"/v1/fine_tuning/jobs/{jid}/stream", headers={"Last-Event-ID": "not-an-id"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "Last-Event-ID"


def test_a_metric_point_wakes_the_stream(api, model_dir, run_as_worker, stack_engine):
    """record_metrics announces itself too (not only writes that add an event)."""
    jid = api.job(str(model_dir)).json()["id"]
    claim = run_as_worker(jid)
    with api.http.stream("GET", f"/v1/fine_tuning/jobs/{jid}/stream", timeout=30) as r:
        lines = r.iter_lines()
        for line in lines:
            if line.startswith("event: status"):
                break
        with Session(stack_engine) as s:
            runs.record_metrics(s, jid, claim.attempt, 7, {"train_loss": 0.5})
            s.commit()
        t0 = time.perf_counter()
        for line in lines:
            if line.startswith("data:") and '"step":7' in line.replace(" ", ""):
                break
        assert time.perf_counter() - t0 < SAFETY_NET_SECONDS / 3
