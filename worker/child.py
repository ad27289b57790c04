"""The training process: runs core.training `run()` for one job attempt.

Started by worker.runner in its own process group; it knows nothing about SQL or Celery.
Progress goes to the parent as JSON lines on an inherited pipe; the last line is the
result. SIGUSR1 asks for a pause (checkpoint, then exit 0 with status "paused"), SIGUSR2
for a graceful cancel; a hard cancel is the parent killing the process group.

    python -m worker.child --spec spec.json --workdir DIR --events-fd N [--resume-from CKPT]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import traceback
from pathlib import Path

PAUSE_SIGNAL = signal.SIGUSR1
CANCEL_SIGNAL = signal.SIGUSR2


class PipeReporter:
    """The Reporter protocol as JSON lines; one write per line keeps lines whole."""

    def __init__(self, fd: int):
        self._out = os.fdopen(fd, "w", buffering=1, encoding="utf-8")
        self._lock = threading.Lock()

    def send(self, kind: str, **fields) -> None:
        line = json.dumps({"type": kind, **fields}, ensure_ascii=False, default=str)
        with self._lock:
            self._out.write(line + "\n")
            self._out.flush()

    def phase(self, name: str) -> None:
        self.send("phase", name=name)

    def metrics(self, step: int, values: dict) -> None:
        self.send("metrics", step=step, values=values)

    def checkpoint(self, step: int, path: Path, metrics: dict) -> None:
        self.send("checkpoint", step=step, path=str(Path(path).resolve()), metrics=metrics)

    def event(self, level: str, message: str, data: dict | None = None) -> None:
        self.send("event", level=level, message=message, data=data)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="worker.child")
    p.add_argument("--spec", required=True, type=Path)
    p.add_argument("--workdir", required=True, type=Path)
    p.add_argument("--events-fd", required=True, type=int)
    p.add_argument("--resume-from", type=Path)
    args = p.parse_args(argv)

    stop: list[str] = []
    signal.signal(PAUSE_SIGNAL, lambda *_: stop.append("pause"))
    signal.signal(CANCEL_SIGNAL, lambda *_: stop.append("cancel"))

    def should_stop() -> str | None:
        return "cancel" if "cancel" in stop else ("pause" if stop else None)

    reporter = PipeReporter(args.events_fd)
    from core.datafiles import DataFileError
    from core.spec import JobSpec
    from core.training.errors import TrainingInputError
    from core.training.pipeline import run

    spec = JobSpec.model_validate_json(args.spec.read_text(encoding="utf-8"))
    try:
        result = run(spec, args.workdir, reporter, should_stop, resume_from=args.resume_from)
    except (TrainingInputError, DataFileError) as e:
        # The job's input is unusable: a message for the client, not a traceback.
        reporter.send("error", code="invalid_training_input", message=str(e))
        return 3
    except BaseException as e:
        traceback.print_exc()
        reporter.send("error", code="training_error", message=f"{type(e).__name__}: {e}")
        return 1
    reporter.send(
        "result",
        status=result.status,
        output_dir=str(Path(result.output_dir).resolve()),
        global_step=result.global_step,
        metrics=result.metrics,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
