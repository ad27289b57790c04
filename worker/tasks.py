"""The worker's tasks, registered under the names in core.tasks (the API sends by name)."""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

from celery.exceptions import Reject

from core.storage import get_store
from core.tasks import DRY_RUN, RUN_JOB
from worker.app import STOPPING, WORKER_ID, app, settings

# One training child per slot; the pool has one thread more so dry runs are never stuck
# behind training. The scheduler sends a job only to a worker whose slot SQL shows free, but
# the thread of a just-finished job may still be cleaning up: wait for it a little, and only
# then give the message back to the queue.
_slots = threading.BoundedSemaphore(settings.worker_slots)
SLOT_WAIT_SECONDS = 5.0


@app.task(name=RUN_JOB, ignore_result=True)
def run_job(job_id: str) -> str | None:
    from core.db import get_engine
    from core.services.runs import deliverable
    from worker import runner

    if STOPPING.is_set():
        return None  # leaving the pool; the reconciler re-dispatches it to a live worker
    engine = get_engine(settings.database_url)
    if not runner.with_db_retry(engine, deliverable, job_id, WORKER_ID):
        return None  # a duplicate or stale message: the job runs (or ran) elsewhere or already here
    if not _slots.acquire(timeout=SLOT_WAIT_SECONDS):
        raise Reject(f"all {settings.worker_slots} slot(s) busy", requeue=True)
    try:
        status = runner.run_job(job_id, settings, WORKER_ID, engine)
    finally:
        _slots.release()
    # "queued": the worker is stopping and gave the job back; the scheduler sends it to
    # another worker, so this message is done with (acked), not re-queued here.
    return status


@app.task(name=DRY_RUN, ignore_result=False)
def dry_run(spec: dict, team_id: str) -> dict:
    """Token counts and the dataset report for a spec, without loading model weights.

    Input problems come back as ValueError (a builtin, so the API can deserialize it
    without importing the training package)."""
    from core.datafiles import DataFileError
    from core.db import get_engine
    from core.spec import JobSpec
    from core.training.dry_run import dry_run as count
    from core.training.errors import TrainingInputError
    from worker.transfers import Transfers

    with tempfile.TemporaryDirectory(prefix="tuneforge-dryrun-") as tmp:
        try:
            transfers = Transfers("dry-run", get_store(settings), get_engine(settings.database_url),
                                  max_rows=settings.max_upload_rows, hub_cache=settings.hub_cache_dir)
            local = transfers.fetch_inputs(spec, team_id, Path(tmp), relative=False)
            return count(JobSpec.model_validate(local))
        except (TrainingInputError, DataFileError, ValueError) as e:
            raise ValueError(str(e).replace(tmp + "/", "")) from None
