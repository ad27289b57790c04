"""The FastAPI application. `uvicorn api.app:app` serves it; `create_app(settings)` builds
one for a given configuration. Imports nothing from the training stack, so it starts fast
on a machine without CUDA."""

from __future__ import annotations

from fastapi import FastAPI

from api import errors, metrics
from api.deps import Services
from api.dispatch import Dispatcher
from api.routes import downloads, files, jobs, runs, system
from api.routes import models as model_routes
from api.routes import webhooks as webhook_routes
from api.uploads import UploadLimit
from core.config import Settings, get_settings
from core.db import make_engine, session_factory


def create_app(settings: Settings | None = None) -> FastAPI:
    from core.storage import get_store

    settings = settings or get_settings()
    app = FastAPI(
        title="tuneforge",
        version="0.1.0",
        description="OpenAI-compatible fine-tuning API for open LLMs (QLoRA), with extensions.",
    )
    engine = make_engine(settings.database_url)
    sessions = session_factory(engine)
    app.state.services = Services(settings=settings, sessions=sessions, dispatcher=Dispatcher(settings), store=get_store(settings))
    errors.install(app)
    metrics.install(app, sessions)
    app.add_middleware(UploadLimit, limit=settings.max_upload_bytes, path="/v1/files")
    for module in (files, jobs, runs, downloads, system):
        app.include_router(module.router)
    app.include_router(webhook_routes.router)
    app.include_router(model_routes.router)
    return app


def __getattr__(name: str):
    """`app` is built on first access (by uvicorn), not at import: importing the module for
    its factory must not need a configured environment."""
    if name == "app":
        global app
        app = create_app()
        return app
    raise AttributeError(name)
