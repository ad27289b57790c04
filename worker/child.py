"""The training process: runs core.training `run()` for one job attempt.

Started by worker.process (for worker.runner) in its own process group, with the minimal
environment of worker.childenv (no database URL, signing secret or store credentials),
either alone or as every rank of a multi-GPU job under `accelerate launch`
(core.training.launch); it knows nothing about SQL or Celery. Progress goes to the parent as JSON lines appended to an events file (a file,
not an inherited pipe: the launcher does not pass descriptors on to the ranks); only rank 0
writes, and its last line is the result. SIGUSR1 asks for a pause (checkpoint, then exit 0
with status "paused"), SIGUSR2 for a graceful cancel; a hard cancel is the parent killing
the process group. Ranks hear pause/cancel through the launcher's stop file instead.

    python -m worker.child --spec spec.json --workdir DIR --events FILE [--resume-from CKPT]
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


class FileReporter:
    """The Reporter protocol as JSON lines appended to a file; one write per line keeps
    lines whole for the runner, which tails the file. A non-main rank sends nothing."""

    def __init__(self, path: Path, enabled: bool = True):
        self._out = path.open("a", encoding="utf-8") if enabled else None
        self._lock = threading.Lock()

    def send(self, kind: str, **fields) -> None:
        if self._out is None:
            return
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
    p.add_argument("--events", required=True, type=Path)
    p.add_argument("--resume-from", type=Path)
    args = p.parse_args(argv)

    stop: list[str] = []
    signal.signal(PAUSE_SIGNAL, lambda *_: stop.append("pause"))
    signal.signal(CANCEL_SIGNAL, lambda *_: stop.append("cancel"))

    from core.training.distributed import is_main_process, world_size
    from core.training.launch import STOP_FILE_ENV

    stop_file = os.environ.get(STOP_FILE_ENV)  # set by core.training.launch for its ranks

    def should_stop() -> str | None:
        asked = stop + (_read_words(stop_file) if stop_file else [])
        return "cancel" if "cancel" in asked else ("pause" if asked else None)

    if world_size() > 1:
        _die_with_launcher()
    reporter = FileReporter(args.events, enabled=is_main_process())
    from core.datafiles import DataFileError
    from core.spec import JobSpec
    from core.training.errors import TrainingInputError, TrainingOutOfMemory
    from core.training.pipeline import run

    spec = JobSpec.model_validate_json(args.spec.read_text(encoding="utf-8"))
    try:
        result = run(spec, args.workdir, reporter, should_stop, resume_from=args.resume_from)
    except TrainingOutOfMemory as e:
        # Out of GPU memory even after the retry with half the micro-batch: the message says
        # what to lower.
        reporter.send("error", code="out_of_memory", message=str(e))
        return 3
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


def _read_words(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().split()
    except OSError:
        return []


def _die_with_launcher() -> None:
    """A rank runs in a session of its own (torch.distributed.run puts it there), out of
    reach of the runner's kill of the process group; if the launcher is SIGKILLed, the
    kernel kills this rank too instead of leaving it training as an orphan."""
    try:
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the agent's own SIGTERM handling remains
        pass


if __name__ == "__main__":
    sys.exit(main())
