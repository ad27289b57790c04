"""The runner's own fixtures (its database, store and the tiny model), from tests/worker."""

from tests.worker.conftest import engine, make_job, model_dir, store, team_id, worker_db, wsettings  # noqa: F401
