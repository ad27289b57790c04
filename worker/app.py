"""The Celery app of a worker process: one thread per slot, each supervising one training
child (worker.runner), plus one spare thread so dry runs are answered while slots train.

Delivery settings (DESIGN.md §3): a message is acknowledged only after its task returned
(`task_acks_late`) and re-queued if the worker dies (`task_reject_on_worker_lost`), with
one message prefetched at a time; a second delivery of a claimed job is a no-op, because
the claim in SQL, not the broker, decides who runs a job.

    python -m celery -A worker.app worker        (what `tuneforge worker` starts)
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import threading

from celery import Celery, signals

from core.config import get_settings
from core.db import get_engine, session_scope
from core.services.workers import deregister_worker, register_worker, worker_heartbeat
from core.tasks import worker_queue
from worker import scheduler, webhooks

log = logging.getLogger(__name__)
settings = get_settings()
settings.ensure_broker_folders()

WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"

app = Celery("tuneforge", broker=settings.broker_url, backend=settings.result_backend_url, include=["worker.tasks"])
app.conf.update(
    broker_transport_options=settings.broker_transport_options,
    broker_connection_retry_on_startup=True,
    task_default_queue=settings.queue,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,  # only the dry run returns a value (it sets ignore_result=False)
    result_expires=600,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    # Threads, not prefork: a task only supervises a child process, and the heartbeat
    # thread must see every job this process runs.
    worker_pool="threads",
    worker_concurrency=settings.worker_slots + 1,
    worker_hijack_root_logger=False,
)


def gpu_inventory() -> tuple[int, str | None, float | None]:
    """(count, name, memory GB of the smallest) from nvidia-smi; (0, None, None) without one."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return 0, None, None
    rows = [[c.strip() for c in line.split(",")] for line in out.splitlines() if line.strip()]
    if not rows:
        return 0, None, None
    return len(rows), rows[0][0], round(min(float(r[1]) for r in rows) / 1024, 1)


# Set when the worker starts shutting down: heartbeat, scheduling and new deliveries stop.
STOPPING = threading.Event()


def _heartbeat_loop() -> None:
    from worker.runner import running_job_ids

    engine = get_engine(settings.database_url)
    while not STOPPING.wait(settings.heartbeat_seconds):
        try:
            with session_scope(engine) as s:
                worker_heartbeat(s, WORKER_ID, running_job_ids())
        except Exception:  # a database blip must not kill the heartbeat
            log.exception("worker heartbeat failed")


def _maintenance_loop() -> None:
    """Retention on this host: work dirs no live attempt owns (a killed worker's leftovers,
    with any copies of files deleted since), checkpoints beyond a finished job's policy, and
    old history when TUNEFORGE_EVENT_RETENTION_DAYS is set. Every worker may run it at once:
    each step is idempotent. Store-wide orphans are `tuneforge admin gc`'s (a full listing)."""
    from core.services.retention import collect_garbage
    from core.storage import get_store

    engine, store = get_engine(settings.database_url), get_store(settings)
    while not STOPPING.wait(settings.maintenance_interval_seconds):
        try:
            report = collect_garbage(engine, store, settings.work_dir, dry_run=False, scan_store=False,
                                     retention_days=settings.event_retention_days)
            for line in report.lines(dry_run=False):
                log.info("maintenance: %s", line)
        except Exception:
            log.exception("worker maintenance failed")


@signals.celeryd_after_setup.connect
def _own_queue(instance, **_kwargs) -> None:
    """Consume this worker's own queue whatever -Q says: the scheduler sends jobs there."""
    instance.app.amqp.queues.select_add(worker_queue(settings.queue, WORKER_ID))


@signals.worker_ready.connect
def _register(**_kwargs) -> None:
    gpus, name, memory = gpu_inventory()
    with session_scope(get_engine(settings.database_url)) as s:
        register_worker(s, WORKER_ID, socket.gethostname(), slots=settings.worker_slots, gpus=gpus,
                        gpu_name=name, gpu_memory_gb=memory)
    threading.Thread(target=_heartbeat_loop, daemon=True, name="worker-heartbeat").start()
    threading.Thread(target=_maintenance_loop, daemon=True, name="worker-maintenance").start()
    scheduler.start(app, settings, STOPPING)
    webhooks.start(settings, STOPPING)  # the outbox's delivery loop, off the jobs' path
    log.info("worker %s registered: %s slot(s), %s GPU(s)", WORKER_ID, settings.worker_slots, gpus)


@signals.worker_shutting_down.connect
def _stop_jobs(**_kwargs) -> None:
    """Leave the pool before handing jobs back: a job given back while this worker still
    looked live and ran its scheduler would be planned straight back onto it."""
    from worker.runner import stop_all

    STOPPING.set()  # ends the heartbeat and this worker's scheduling passes
    _leave_pool()
    stop_all()


@signals.worker_shutdown.connect
def _deregister(**_kwargs) -> None:
    STOPPING.set()
    _leave_pool()


def _leave_pool() -> None:
    try:
        with session_scope(get_engine(settings.database_url)) as s:
            deregister_worker(s, WORKER_ID)
    except Exception:
        log.exception("could not mark worker %s inactive", WORKER_ID)
