"""The FastAPI application. `uvicorn api.app:app` serves it; `create_app(settings)` builds
one for a given configuration. Imports nothing from the training stack, so it starts fast
on a machine without CUDA."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from api import errors, metrics
from api.deps import Services
from api.dispatch import Dispatcher
from api.guard import RequestGuard
from api.routes import downloads, files, jobs, pool, runs, system
from api.routes import models as model_routes
from api.routes import webhooks as webhook_routes
from api.streams import JobStreams
from core.config import Settings, get_settings
from core.db import make_engine, session_factory
from core.notify import Listener


def create_app(settings: Settings | None = None) -> FastAPI:
    from core.storage import get_store

    settings = settings or get_settings()
    listener = Listener(settings.database_url)  # one per process: SSE streams wait on it
    hooks: list[tuple[Callable[[], object], Callable[[], object]]] = [(listener.start, listener.stop)]

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        for start, _stop in hooks:
            start()
        yield
        for _start, stop in reversed(hooks):
            stop()

    app = FastAPI(
        title="tuneforge",
        version="0.1.0",
        description="OpenAI-compatible fine-tuning API for open LLMs (QLoRA), with extensions.",
        lifespan=lifespan,
    )
    engine = make_engine(settings.database_url)
    sessions = session_factory(engine)
    app.state.streams = JobStreams(sessions, listener)
    app.state.services = Services(settings=settings, sessions=sessions, dispatcher=Dispatcher(settings), store=get_store(settings))
    errors.install(app)
    # Added before the metrics middleware, so it sits inside it: that one (a BaseHTTPMiddleware)
    # reads the body through a task group, which would wrap the guard's 413 in an ExceptionGroup.
    app.add_middleware(
        RequestGuard, sessions=sessions, request_limit=settings.max_request_bytes, upload_limit=settings.max_upload_bytes
    )
    if (server := metrics.install(app, sessions, settings)) is not None:
        hooks.append(server)
    for module in (files, jobs, runs, downloads, pool, system):
        app.include_router(module.router)
    install_dashboard(app)
    app.include_router(webhook_routes.router)
    app.include_router(model_routes.router)
    return app


STATIC = Path(__file__).parent / "static"


def install_dashboard(app: FastAPI) -> None:
    """The web dashboard: static files at / and /static/ (shipped in the package, no build
    step). The page calls only the public /v1 API with the key the user types in."""
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


def __getattr__(name: str):
    """`app` is built on first access (by uvicorn), not at import: importing the module for
    its factory must not need a configured environment."""
    if name == "app":
        global app
        app = create_app()
        return app
    raise AttributeError(name)
