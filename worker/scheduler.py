"""The scheduling loop every worker process runs: reconcile, plan in SQL, then send.

Any number of workers may run it at once: `plan` row-locks the worker pool, so two
planners never hand out the same slot, and a job's assignment is committed before its
message is sent (a worker that receives it finds the row). The broker therefore only ever
holds jobs that were dispatched to a worker with room for them; everything else waits in
SQL, where fair share, priority and age decide what goes next.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from core.db import get_engine, session_scope
from core.services.scheduling import plan, reconcile
from core.tasks import RUN_JOB, worker_queue

log = logging.getLogger(__name__)


def tick(app, settings) -> list[str]:
    """One pass; returns the ids of the jobs it dispatched."""
    engine = get_engine(settings.database_url)
    with session_scope(engine) as s:
        fixed = reconcile(s, dispatch_timeout=timedelta(seconds=settings.dispatch_timeout_seconds),
                          worker_timeout=timedelta(seconds=settings.worker_timeout_seconds))
    for what, ids in (("re-dispatching", fixed.redispatched), ("re-queued", fixed.requeued), ("failed", fixed.failed),
                      ("marked silent workers inactive", fixed.retired_workers)):
        if ids:
            log.warning("reconciler %s: %s", what, ", ".join(ids))
    with session_scope(engine) as s:
        assignments = plan(s, heartbeat_timeout=timedelta(seconds=settings.worker_timeout_seconds))
    for a in assignments:  # after the commit; a lost send is repaired by reconcile
        try:
            app.send_task(RUN_JOB, args=[a.job_id], queue=worker_queue(settings.queue, a.worker_id))
        except Exception:
            log.exception("could not send job %s to worker %s; the reconciler will retry", a.job_id, a.worker_id)
    return [a.job_id for a in assignments]


def start(app, settings, stop: threading.Event) -> threading.Thread:
    def loop() -> None:
        while not stop.wait(settings.schedule_interval_seconds):
            try:
                tick(app, settings)
            except Exception:  # a database or broker blip must not end scheduling
                log.exception("scheduling pass failed")

    thread = threading.Thread(target=loop, daemon=True, name="scheduler")
    thread.start()
    return thread
