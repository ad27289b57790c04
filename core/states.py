"""Job status and phase, and the one rule table for status changes (DESIGN.md §5).

`set_job_status` in core.services.lifecycle is the only writer of Job.status; it consults
`can_transition` here. `pausing` mirrors `cancelling`: a request the runner honours by
checkpointing and stopping, so the client sees that its pause was accepted.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    VALIDATING_FILES = "validating_files"
    QUEUED = "queued"
    RUNNING = "running"
    PAUSING = "pausing"
    PAUSED = "paused"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Phase(StrEnum):
    LOADING_MODEL = "loading_model"
    PREPARING_DATA = "preparing_data"
    TRAINING = "training"
    EVALUATING = "evaluating"
    UPLOADING = "uploading"


S = JobStatus
TERMINAL = frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLED})
ACTIVE = frozenset({S.RUNNING, S.PAUSING, S.CANCELLING})

TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    S.VALIDATING_FILES: frozenset({S.QUEUED, S.FAILED, S.CANCELLED}),
    # queued -> queued is a re-dispatch (new attempt after a lost worker), recorded as an event.
    S.QUEUED: frozenset({S.RUNNING, S.CANCELLED, S.PAUSED, S.FAILED, S.QUEUED}),
    S.RUNNING: frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLING, S.PAUSING, S.QUEUED, S.PAUSED, S.CANCELLED}),
    S.PAUSING: frozenset({S.PAUSED, S.CANCELLING, S.FAILED, S.SUCCEEDED, S.QUEUED, S.CANCELLED}),
    S.CANCELLING: frozenset({S.CANCELLED, S.FAILED, S.SUCCEEDED}),
    S.PAUSED: frozenset({S.QUEUED, S.CANCELLED}),
    S.SUCCEEDED: frozenset(),
    S.FAILED: frozenset(),
    S.CANCELLED: frozenset(),
}


def can_transition(current: JobStatus | str, new: JobStatus | str) -> bool:
    return JobStatus(new) in TRANSITIONS[JobStatus(current)]


def is_terminal(status: JobStatus | str) -> bool:
    return JobStatus(status) in TERMINAL
