"""The scheduling loop every worker process runs: reconcile, plan in SQL, then send.

Any number of workers run it; each tick takes the planner's advisory lock (try-lock), so
exactly one plans and the others skip instead of waiting (core.services.planner). A job's
assignment is committed before its message is sent (a worker that receives it finds the
row). The broker therefore only ever holds jobs that were dispatched to a worker with room
for them; everything else waits in SQL, where fair share, priority and age decide.

Ticks are event-driven: writers `notify(PLAN)` when a job is queued or ends or a worker
joins, and the process that planned last (the "leader") wakes on that at once; the
interval stays as the safety net (lost notifications, SQLite, leases running out). The
others only try the lock once per interval, so a thousand workers do not all stampede the
database on every event; if the leader dies, the next one to win the lock takes over.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta

from core.db import get_engine, session_scope
from core.notify import PLAN, Listener
from core.services.scheduling import PlanCache, Tick, plan_tick, reconcile
from core.tasks import RUN_JOB, worker_queue

log = logging.getLogger(__name__)

#: Assignments one tick commits at most; a tick that stops there runs again at once. Keeps a
#: tick (and its row locks) short when a large pool starts empty.
MAX_ASSIGNMENTS = 256


def run_tick(app, settings, cache: PlanCache | None = None, reconcile_now: bool = True) -> Tick:
    """One pass: reconcile (if due), plan, then send what was assigned."""
    engine = get_engine(settings.database_url)
    if reconcile_now:
        with session_scope(engine) as s:
            fixed = reconcile(s, dispatch_timeout=timedelta(seconds=settings.dispatch_timeout_seconds),
                              worker_timeout=timedelta(seconds=settings.worker_timeout_seconds))
        for what, ids in (("re-dispatching", fixed.redispatched), ("re-queued", fixed.requeued), ("failed", fixed.failed),
                          ("marked silent workers inactive", fixed.retired_workers)):
            if ids:
                log.warning("reconciler %s: %s", what, ", ".join(ids))
    with session_scope(engine) as s:
        result = plan_tick(s, heartbeat_timeout=timedelta(seconds=settings.worker_timeout_seconds),
                           cache=cache, max_assignments=MAX_ASSIGNMENTS)
    for a in result.assignments:  # after the commit; a lost send is repaired by reconcile
        try:
            app.send_task(RUN_JOB, args=[a.job_id], queue=worker_queue(settings.queue, a.worker_id))
        except Exception:
            log.exception("could not send job %s to worker %s; the reconciler will retry", a.job_id, a.worker_id)
    return result


def start(app, settings, stop: threading.Event, listener: Listener | None = None) -> threading.Thread:
    """Run the loop in a daemon thread until `stop` is set. `listener` defaults to one of
    this process's own on the PLAN channel (a no-op on SQLite)."""
    listener = listener or Listener(settings.database_url, channels=(PLAN,)).start()
    interval = settings.schedule_interval_seconds

    def wait(event: threading.Event) -> None:
        """Until `event`, `stop` or the interval, whichever comes first."""
        deadline = time.monotonic() + interval
        while not stop.is_set() and (left := deadline - time.monotonic()) > 0:
            if event.wait(min(left, 0.5)):
                return

    def loop() -> None:
        cache, leader, last_reconcile = PlanCache(), False, float("-inf")
        with listener.waiter(PLAN) as woke:
            while not stop.is_set():
                woke.clear()  # a notification from here on wakes the next pass
                try:
                    due = time.monotonic() - last_reconcile >= interval
                    result = run_tick(app, settings, cache, reconcile_now=due)
                    if due:
                        last_reconcile = time.monotonic()
                    leader = result.planned
                    if result.capped:
                        woke.set()
                except Exception:  # a database or broker blip must not end scheduling
                    log.exception("scheduling pass failed")
                wait(woke if leader else stop)

    thread = threading.Thread(target=loop, daemon=True, name="scheduler")
    thread.start()
    return thread
