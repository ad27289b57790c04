"""Celery task names, shared by the sender (api) and the consumer (worker).

The API sends tasks by name only (`send_task`), so it never imports the worker package
and its Celery task code; both sides read the names from here.
"""

from __future__ import annotations

RUN_JOB = "tuneforge.run_job"
DRY_RUN = "tuneforge.dry_run"


def worker_queue(queue: str, worker_id: str) -> str:
    """The queue only one worker consumes: the scheduler sends a job to the worker it chose
    (DESIGN.md §3: which job runs where is decided in SQL, not by broker order)."""
    return f"{queue}.{worker_id}"
