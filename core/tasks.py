"""Celery task names, shared by the sender (api) and the consumer (worker).

The API sends tasks by name only (`send_task`), so it never imports the worker package
and its Celery task code; both sides read the names from here.
"""

from __future__ import annotations

RUN_JOB = "tuneforge.run_job"
DRY_RUN = "tuneforge.dry_run"
