"""Sending work to the workers, by task name only (the API never imports worker code).

Sends happen after the database commit (Polar's enqueue-after-commit): a worker that
receives the message must find the committed job. If the broker is down the job stays
`queued` in SQL, which is the source of truth, and the reconciler dispatches it later, so
a failed send is logged, not raised to the client.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeout

from core.config import Settings
from core.tasks import DRY_RUN, RUN_JOB

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

    def run_jobs(self, job_ids: list[str]) -> None:
        """Call only after the commit that made these jobs `queued`."""
        for job_id in job_ids:
            try:
                self.celery.send_task(
                    RUN_JOB, args=[job_id], queue=self.settings.queue, ignore_result=True, retry=True, retry_policy=_SEND_RETRY
                )
            except Exception:  # the reconciler re-dispatches what SQL says is queued
                log.exception("could not send %s for job %s; leaving it to the reconciler", RUN_JOB, job_id)

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
