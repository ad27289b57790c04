"""The OpenAI-compatibility surface beyond jobs: webhooks, results files, /v1/models.

Fixtures:
  receiver   a real HTTP server on 127.0.0.1 that records every POST; per path it can
             fail the first N requests or hang (to play a broken or slow webhook receiver)
  deliverer  the worker's webhook delivery loop (worker.webhooks) running in this process
             against the live stack's database, with backoffs of a fraction of a second
  api / make_api / run_as_worker / model_dir   the live API fixtures of tests/api
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.api.conftest import Api, api, make_api, model_dir, other, run_as_worker  # noqa: F401
from tests.conftest import settings_from_env

FAST_WEBHOOKS = {
    "TUNEFORGE_WEBHOOK_BACKOFF_SECONDS": "0.2",
    "TUNEFORGE_WEBHOOK_POLL_SECONDS": "0.1",
    "TUNEFORGE_WEBHOOK_TIMEOUT_SECONDS": "3",
}


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    answered: int
    at: float = 0.0  # time.monotonic() when it arrived


@dataclass
class Receiver:
    base: str = ""
    requests: list[Received] = field(default_factory=list)
    failures_left: dict[str, int] = field(default_factory=dict)  # path -> answers of 500 still to give
    hang_seconds: dict[str, float] = field(default_factory=dict)  # path -> how long to stall first
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def on(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if r.path == path]

    def answered_ok(self, path: str) -> list[Received]:
        return [r for r in self.on(path) if r.answered == 200]


@pytest.fixture(scope="session")
def receiver() -> Iterator[Receiver]:
    rec = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's naming)
            at = time.monotonic()
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            time.sleep(rec.hang_seconds.get(self.path, 0))
            with rec.lock:
                left = rec.failures_left.get(self.path, 0)
                if left:
                    rec.failures_left[self.path] = left - 1
                code = 500 if left else 200
                rec.requests.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body, code, at))
            self.send_response(code)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *_args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    rec.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield rec
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def fast_settings(settings_env):
    return settings_from_env({**settings_env, **FAST_WEBHOOKS})


@pytest.fixture(scope="session")
def deliverer(fast_settings) -> Iterator[None]:
    from worker import webhooks

    stop = threading.Event()
    thread = webhooks.start(fast_settings, stop)
    yield
    stop.set()
    thread.join(3 * fast_settings.webhook_timeout_seconds)  # sends under way finish before the database goes


def wait_for(predicate, timeout: float = 20, what: str = "condition", poll: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(poll)
