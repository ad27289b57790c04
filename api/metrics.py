"""Prometheus /metrics: request counts and latency per route, and jobs by status.

Each app gets its own registry (tests build several apps in one process). Job counts are
read from SQL at scrape time, so they are right even with several API replicas.

Who may scrape: by default anyone who reaches the API port; with TUNEFORGE_METRICS_TOKEN a
scrape needs that bearer token; with TUNEFORGE_METRICS_PORT the figures are served on a port
of their own (kept off the public network) and /metrics leaves the API port.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest, start_http_server
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from api.guard import bearer_key
from core.config import Settings
from core.errors import Unauthorized
from core.models import Job


class JobsByStatus:
    def __init__(self, sessions: sessionmaker[Session]):
        self.sessions = sessions

    def collect(self):
        g = GaugeMetricFamily("tuneforge_jobs", "Jobs by status", labels=["status"])
        try:
            with self.sessions() as session:
                for status, n in session.execute(select(Job.status, func.count()).group_by(Job.status)):
                    g.add_metric([status], n)
        except Exception:  # a scrape must not fail because the database is briefly away
            pass
        yield g


def install(app: FastAPI, sessions: sessionmaker[Session], settings: Settings) -> tuple[Callable[[], None], Callable[[], None]] | None:
    """Request counters + the /metrics route; with TUNEFORGE_METRICS_PORT, returns the (start,
    stop) of a server of its own for the app's lifespan instead of adding the route."""
    registry = CollectorRegistry()
    requests = Counter("tuneforge_http_requests", "HTTP requests", ["method", "route", "status"], registry=registry)
    latency = Histogram("tuneforge_http_request_seconds", "HTTP request latency", ["method", "route"], registry=registry)
    registry.register(JobsByStatus(sessions))

    @app.middleware("http")
    async def _observe(request: Request, call_next):
        start = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")  # the template, not the raw path: bounded label values
        requests.labels(request.method, path, str(response.status_code)).inc()
        latency.labels(request.method, path).observe(time.perf_counter() - start)
        return response

    if settings.metrics_port:
        servers: list = []

        def start() -> None:
            servers.append(start_http_server(settings.metrics_port, settings.metrics_host, registry=registry)[0])

        def stop() -> None:
            for server in servers:
                server.shutdown()
                server.server_close()

        return start, stop  # run by the app's lifespan (Starlette ignores on_startup once one is set)

    @app.get("/metrics", include_in_schema=False)
    def metrics(request: Request) -> Response:
        if settings.metrics_token and not _token_matches(request, settings.metrics_token):
            raise Unauthorized("GET /metrics needs 'Authorization: Bearer <TUNEFORGE_METRICS_TOKEN>'", code="invalid_metrics_token")
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def _token_matches(request: Request, token: str) -> bool:
    given = bearer_key(request.headers)
    return given is not None and hmac.compare_digest(given.encode(), token.encode())
