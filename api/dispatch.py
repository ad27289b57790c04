"""The API's link to the workers, by task name only (the API never imports worker code).

The API sends no training work: a created or resumed job waits `queued` in SQL and the
workers' scheduler dispatches it (worker/scheduler.py). What the API does send is the dry
run of `POST /v1/fine_tuning/jobs/validate`, which any worker answers, and it checks the
broker for /readyz.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeout

from core.config import Settings
from core.tasks import DRY_RUN

log = logging.getLogger(__name__)
_SEND_RETRY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}


class Dispatcher:
    def __init__(self, settings: Settings):
        self.settings = settings
        settings.ensure_broker_folders()  # the embedded filesystem broker does not create them
        self.celery = Celery("tuneforge-api", broker=settings.broker_url, backend=settings.result_backend_url)
        self.celery.conf.update(
            broker_transport_options=settings.broker_transport_options,  # the same as the worker's
            broker_connection_retry_on_startup=False,
            # The API must answer quickly when Redis is away; the default retries for ~20s.
            result_backend_transport_options={"retry_policy": _SEND_RETRY},
            task_default_queue=settings.queue,
            task_serializer="json",
            result_serializer="json",
            accept_content=["json"],
        )

    def dry_run(self, spec: dict[str, Any], team_id: str) -> tuple[dict[str, Any] | None, str | None]:
        """(a worker's answer for `spec`, None) or (None, why there is none).

        The message expires with the wait, so a worker that comes up later does not burn
        time on an answer nobody reads.
        """
        timeout = self.settings.dry_run_timeout_seconds
        try:
            result = self.celery.send_task(
                DRY_RUN, args=[spec], kwargs={"team_id": team_id}, queue=self.settings.queue, expires=timeout,
                retry=True, retry_policy=_SEND_RETRY,
            )
        except Exception as e:
            log.warning("dry run not sent: %s", e)
            return None, "the task broker is unreachable; token counts were not computed"
        try:
            return result.get(timeout=timeout, propagate=True), None
        except CeleryTimeout:
            return None, f"no worker answered within {timeout:g}s; token counts were not computed"
        except Exception as e:
            return None, f"the worker's dry run failed: {str(e).strip()}"

    def broker_reachable(self) -> bool:
        try:
            with self.celery.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=2)
            return True
        except Exception:
            return False
