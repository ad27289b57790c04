"""Webhook delivery benchmark: how fast committed events reach a healthy receiver, with and
without a hanging receiver (another team's endpoint) competing for the same worker's senders.

Runs the worker's delivery loop (worker.webhooks) in this process against a fresh
PostgreSQL database and a local HTTP receiver on 127.0.0.1. Each event is written and
committed the way a status change writes it (core.services.webhooks.emit); the figures are
the cost of that write, and commit-to-arrival latency at the default poll interval and at a
short one.

    python bench/webhooks.py [--events 100] [--stalled 20]

Prints figures; asserts nothing. Needs PostgreSQL on 127.0.0.1:5432 (trust auth).
"""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import statistics
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from sqlalchemy.orm import Session

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.db import make_engine  # noqa: E402
from core.services import webhooks  # noqa: E402
from core.services.auth import create_team  # noqa: E402
from tests.conftest import fresh_database, settings_from_env  # noqa: E402
from worker import webhooks as delivery  # noqa: E402

HANG_SECONDS = 30.0


def receiver() -> tuple[str, dict[str, float]]:
    arrivals: dict[str, float] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers["content-length"]))
            if self.path == "/hang":
                time.sleep(HANG_SECONDS)
            else:
                arrivals[json.loads(body)["id"]] = time.monotonic()
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *_args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}", arrivals


def run(url: str, base: str, arrivals: dict[str, float], poll: float, events: int, stalled: int) -> str:
    settings = settings_from_env({"TUNEFORGE_DATABASE_URL": url, "TUNEFORGE_SECRET_KEY": secrets.token_urlsafe(32),
                                  "TUNEFORGE_WEBHOOK_POLL_SECONDS": str(poll),
                                  "TUNEFORGE_WEBHOOK_ALLOW_PRIVATE_TARGETS": "true"})  # receivers on 127.0.0.1
    engine = make_engine(url)
    with Session(engine) as s:
        healthy, hanging = create_team(s, f"ok-{secrets.token_hex(3)}"), create_team(s, f"hang-{secrets.token_hex(3)}")
        webhooks.create_endpoint(s, healthy.id, base + "/ok", allow_private=True)
        webhooks.create_endpoint(s, hanging.id, base + "/hang", allow_private=True)
        for i in range(stalled):
            webhooks.emit(s, hanging.id, "fine_tuning.job.failed", {"id": f"ftjob-stalled-{i}"})
        s.commit()
        healthy_id = healthy.id
    stop = threading.Event()
    thread = delivery.start(settings, stop, engine)
    time.sleep(2 * poll)  # the stalled events are in flight (and hanging) before the measured ones
    sent: dict[str, float] = {}
    write = []
    with Session(engine) as s:
        for i in range(events):
            t0 = time.perf_counter()
            event_id = webhooks.emit(s, healthy_id, "fine_tuning.job.succeeded", {"id": f"ftjob-{i}"})
            s.commit()
            write.append(time.perf_counter() - t0)
            sent[event_id] = time.monotonic()
    deadline = time.monotonic() + 120
    while sum(e in arrivals for e in sent) < events and time.monotonic() < deadline:
        time.sleep(0.02)
    latency = sorted(arrivals[e] - sent[e] for e in sent if e in arrivals)
    drained = max(arrivals[e] for e in sent if e in arrivals) - min(sent.values())
    stop.set()
    thread.join(2 * poll + 1)
    engine.dispose()
    p99 = latency[max(int(len(latency) * 0.99) - 1, 0)]
    return (f"poll {poll:>4}s  stalled {stalled:>3}  delivered {len(latency)}/{events}  "
            f"write+commit {statistics.median(write) * 1000:5.1f} ms  latency p50 {statistics.median(latency) * 1000:6.0f} ms  "
            f"p99 {p99 * 1000:6.0f} ms  all in {drained:5.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100, help="events to the healthy receiver per run")
    parser.add_argument("--stalled", type=int, default=20, help="events to the hanging receiver (0 to leave it idle)")
    args = parser.parse_args()
    base, arrivals = receiver()
    # Sends still hanging at exit outlive the benchmark's database; their errors are noise here.
    logging.getLogger("worker.webhooks").setLevel(logging.CRITICAL)
    print(f"{delivery.SENDERS} senders per worker, at most {delivery.PER_ENDPOINT} in flight per endpoint; "
          f"the hanging receiver stalls {HANG_SECONDS:.0f}s (past the 5 s timeout)")
    with fresh_database("bench_webhooks") as url:
        for poll in (1.0, 0.1):
            for stalled in sorted({0, args.stalled}):
                print(run(url, base, arrivals, poll, args.events, stalled), flush=True)


if __name__ == "__main__":
    main()
