"""How the pipeline tells its caller what is happening, without knowing who listens.

The CLI implements it with a progress bar, the worker forwards it into SQL. No torch here:
the worker imports this module in its supervising process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

PHASES = ("loading_model", "preparing_data", "training", "evaluating", "uploading")


@runtime_checkable
class Reporter(Protocol):
    def phase(self, name: str) -> None:
        """The run entered one of `PHASES`."""

    def metrics(self, step: int, values: dict) -> None:
        """Per logged optimizer step: loss, learning_rate, grad_norm, tokens_per_second, epoch, step, total_steps.

        Also called once with the final evaluation metrics (keys prefixed `eval_`)."""

    def checkpoint(self, step: int, path: Path, metrics: dict) -> None:
        """A resumable checkpoint was written to `path` (a directory)."""

    def event(self, level: str, message: str, data: dict | None = None) -> None:
        """Anything else worth a line in the job's event log (dataset report, resumed from step N)."""


class NullReporter:
    """Listens to nothing; the default for library use and tests."""

    def phase(self, name: str) -> None:
        pass

    def metrics(self, step: int, values: dict) -> None:
        pass

    def checkpoint(self, step: int, path: Path, metrics: dict) -> None:
        pass

    def event(self, level: str, message: str, data: dict | None = None) -> None:
        pass
