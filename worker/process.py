"""The training process of one attempt, seen from the worker: start it in a process group
of its own, tail what it reports, signal or kill the group.

A cancel or a crash kills that group and nothing else, and GPU memory goes back to the
driver when the child exits, whatever state the trainer was in. A job asking for several
GPUs runs its child as N ranks under `accelerate launch` (core.training.launch); the events
file, not an inherited pipe, is the channel because the launcher does not pass descriptors
on to the ranks.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from worker.childenv import child_environment

log = logging.getLogger(__name__)

KILL_GRACE_SECONDS = 10.0
REPO = Path(__file__).resolve().parents[1]


class TrainingProcess:
    """`python -m worker.child` (or N ranks of it) for one attempt dir.

    Files in `root`: events.jsonl (the child's progress, JSON lines, tailed into `events`;
    None marks the end) and child.log (its stdout/stderr; the last lines become a crash's
    error message)."""

    def __init__(self, root: Path, spec_path: Path, workdir: Path, resume: Path | None, gpus: int, name: str):
        self.events: queue.Queue = queue.Queue()
        self.events_path, self.log_path, self.name = root / "events.jsonl", root / "child.log", name
        self.events_path.touch()
        child = ["-m", "worker.child", "--spec", str(spec_path), "--workdir", str(workdir), "--events", str(self.events_path)]
        if resume is not None:
            child += ["--resume-from", str(resume)]
        cmd = [sys.executable, *(["-m", "core.training.launch", str(gpus)] if gpus > 1 else []), *child]
        env = child_environment(PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
                                PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
        with self.log_path.open("wb") as logf:
            self.popen = subprocess.Popen(
                cmd, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        threading.Thread(target=self._read_events, daemon=True, name=f"events-{name}").start()

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    def running(self) -> bool:
        return self.popen.poll() is None

    def _read_events(self) -> None:
        """Tail the events file until the child is gone and every whole line is read."""
        with self.events_path.open("r", encoding="utf-8", errors="replace") as f:
            partial = ""
            while True:
                gone = self.popen.poll() is not None  # before reading: lines written before exit are read below
                while line := f.readline():
                    partial += line
                    if not partial.endswith("\n"):
                        break
                    line, partial = partial, ""
                    try:
                        self.events.put(json.loads(line))
                    except ValueError:
                        log.warning("%s: unreadable line from the training process: %r", self.name, line[:200])
                if gone:
                    break
                time.sleep(0.1)
        self.events.put(None)

    def signal_group(self, sig: int) -> None:
        """The whole group: under accelerate launch, the launcher passes it on to the ranks."""
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass

    def wait(self, timeout: float) -> bool:
        try:
            self.popen.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def kill(self) -> None:
        """SIGTERM the group, SIGKILL it after a grace period."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not self.running():
                return
            self.signal_group(sig)
            if self.wait(KILL_GRACE_SECONDS):
                return

    def crash_message(self) -> str:
        rc = self.popen.returncode
        try:
            lines = [ln for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            lines = []
        tail = " | ".join(lines[-3:]) if lines else "no output"
        how = f"killed by signal {-rc}" if rc is not None and rc < 0 else f"exit code {rc}"
        return f"the training process ended unexpectedly ({how}): {tail}"[:2000]
