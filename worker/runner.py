"""Supervises one job attempt: claim, fetch inputs, spawn the training process, forward its
progress into SQL (fenced by the attempt), obey pause/cancel, upload what it produced.

Training never runs in the worker process: a child (`python -m worker.child`) in its own
process group does. A cancel or a crash kills that group and nothing else, and GPU memory
goes back to the driver when the child exits, whatever state the trainer was in.

Layout of one attempt (Settings.work_dir/<job>/<attempt>/):
    input/      spec.json and the training/validation files, downloaded from the store
    out/        run()'s workdir: outputs, out/checkpoints/checkpoint-N (resumed ones pulled here)
    child.log   the child's stdout/stderr (its last lines become a crash's error message)
    events.jsonl  the child's progress, JSON lines, tailed while it runs

A job asking for several GPUs (resources.gpus > 1) runs its child as N ranks under
`accelerate launch` (core.training.launch); the events file, not an inherited pipe, is the
channel because the launcher does not pass descriptors on to the ranks.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from core.config import Settings
from core.db import get_engine, session_scope
from core.errors import IllegalTransition, StaleAttempt
from core.models import File, Job, Team
from core.services import results, runs
from core.states import JobStatus
from core.storage import get_store

log = logging.getLogger(__name__)
S = JobStatus

# Jobs this process is running now (job id -> JobRun): the worker heartbeat reports them
# and a warm shutdown stops them.
ACTIVE: dict[str, JobRun] = {}
_ACTIVE_LOCK = threading.Lock()

KILL_GRACE_SECONDS = 10.0
STDERR_TAIL_LINES = 20
# A dropped database connection (restart, failover, a killed backend) is retried for at most
# this long: past a lease the job belongs to the reconciler anyway.
DB_RETRY_SECONDS = 30.0


def is_transient(e: BaseException) -> bool:
    """A lost connection, not a refused write: worth running the same transaction again.

    Besides OperationalError / invalidated connections, psycopg answers "can't change
    'autocommit' now" when the pool hands back a connection whose server backend was
    killed mid-transaction (seen when PostgreSQL backends are terminated): also a lost
    connection, not a problem with the write."""
    if isinstance(e, (OperationalError, InterfaceError)):
        return True
    return isinstance(e, DBAPIError) and (e.connection_invalidated or "can't change 'autocommit'" in str(e.orig))


def with_db_retry(engine: Engine, fn, *args, budget: float = DB_RETRY_SECONDS, **kwargs):
    """fn(session, *args) in its own transaction, run again after a transient database error.

    Every runner write is fenced and idempotent per step (metrics merge, checkpoints and
    artifacts upsert), so replaying a transaction whose commit was lost is harmless; the
    worst case is an event recorded twice.
    """
    deadline, delay = time.monotonic() + budget, 0.1
    while True:
        try:
            with session_scope(engine) as s:
                return fn(s, *args, **kwargs)
        except Exception as e:
            if not is_transient(e) or time.monotonic() + delay > deadline:
                raise
            log.warning("database write %s failed (%s); retrying in %.1fs", getattr(fn, "__name__", fn),
                        str(e).splitlines()[0][:200], delay)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def running_job_ids() -> list[str]:
    with _ACTIVE_LOCK:
        return list(ACTIVE)


def stop_all(reason: str = "worker shutting down") -> None:
    """Ask every running attempt to give its job back (checkpoint-free: it resumes from the
    last uploaded checkpoint on the next attempt)."""
    with _ACTIVE_LOCK:
        active = list(ACTIVE.values())
    for run in active:
        run.shutdown(reason)


def run_job(job_id: str, settings: Settings, worker_id: str, engine: Engine | None = None, store=None) -> str | None:
    """Run one delivery of RUN_JOB; returns the attempt's final status, or None when this
    delivery lost the claim (the job is not queued: already running elsewhere, paused,
    cancelled, or a duplicate message)."""
    engine = engine or get_engine(settings.database_url)
    claim = with_db_retry(engine, runs.claim_job, job_id, worker_id, settings.lease_seconds)
    if claim is None:
        log.info("job %s is not queued; ignoring this delivery", job_id)
        return None
    run = JobRun(claim, settings, engine, store or get_store(settings))
    with _ACTIVE_LOCK:
        ACTIVE[job_id] = run
    try:
        return run.execute()
    finally:
        with _ACTIVE_LOCK:
            ACTIVE.pop(job_id, None)


def download_inputs(engine: Engine, store, spec: dict, team_id: str, root: Path, *, relative: bool) -> dict:
    """The spec with its uploaded-file ids replaced by local copies under root/input/.

    Hub datasets (hf://) stay as they are: the pipeline fetches those itself.
    """
    spec = dict(spec)
    with session_scope(engine) as s:
        for key in ("training_file", "validation_file"):
            ref = spec.get(key)
            if not ref or "://" in ref:
                continue
            f = s.get(File, ref)
            if f is None or f.team_id != team_id or f.deleted_at is not None:
                raise InputMissing(f"{key}: file {ref!r} no longer exists")
            rel = Path("input") / f"{f.id}{Path(f.storage_key).suffix or '.' + f.format}"
            store.get_file(f.storage_key, root / rel)
            spec[key] = str(rel if relative else root / rel)
    return spec


class InputMissing(ValueError):
    """A job's file was deleted between submission and run."""


def fine_tuned_model_name(base: str, team: str, suffix: str | None, job_id: str) -> str:
    """OpenAI's `ft:<base>:<org>:<suffix>:<id>`; a local base is named by its directory."""
    if base.startswith(("/", ".", "~", "file:")):
        base = Path(base.removeprefix("file://")).name
    clean = lambda s: re.sub(r"[^A-Za-z0-9_.\-/]+", "-", s).strip("-")
    return f"ft:{clean(base)}:{clean(team)}:{clean(suffix or '')}:{job_id}"


@dataclass
class JobRun:
    claim: runs.Claim
    settings: Settings
    engine: Engine
    store: Any
    proc: subprocess.Popen | None = None
    result: dict | None = None
    error: dict | None = None
    killed_for: str | None = None  # "cancel" | "shutdown" | "stale"
    pause_sent: bool = False
    events: queue.Queue = field(default_factory=queue.Queue)

    @property
    def job_id(self) -> str:
        return self.claim.job_id

    @property
    def attempt(self) -> int:
        return self.claim.attempt

    # --- SQL, fenced -------------------------------------------------------------------

    def _write(self, fn, *args, **kwargs):
        budget = min(DB_RETRY_SECONDS, self.settings.lease_seconds)
        return with_db_retry(self.engine, fn, self.job_id, self.attempt, *args, budget=budget, **kwargs)

    def _event(self, message: str, level: str = "info", data: dict | None = None) -> None:
        self._write(runs.record_event, level, message, data)

    # --- the attempt -------------------------------------------------------------------

    def execute(self) -> str | None:
        root = Path(self.settings.work_dir).resolve() / self.job_id / str(self.attempt)
        shutil.rmtree(root, ignore_errors=True)
        self.root, self.out = root, root / "out"
        (root / "input").mkdir(parents=True)
        self.out.mkdir()
        try:
            spec = self._fetch_inputs()
            resume = self._fetch_checkpoint()
            self._spawn(spec, resume)
            self._supervise()
            status = self._conclude()
        except StaleAttempt as e:
            log.warning("job %s: %s; stopping this attempt", self.job_id, e)
            self._kill("stale")
            return None
        except BaseException as e:
            log.exception("job %s attempt %s failed in the runner", self.job_id, self.attempt)
            self._kill("error")
            try:
                code, text = ("file_not_found", str(e)) if isinstance(e, InputMissing) else ("runner_error", f"{type(e).__name__}: {e}")
                self._write(runs.finish, S.FAILED, {"code": code, "message": text, "param": None})
            except (StaleAttempt, IllegalTransition):
                pass
            if not isinstance(e, Exception):
                raise
            return S.FAILED.value
        if status in (S.SUCCEEDED.value, S.CANCELLED.value):
            shutil.rmtree(root, ignore_errors=True)
        return status

    def _fetch_inputs(self) -> Path:
        """The spec the child gets names its files relative to the attempt dir (its cwd),
        so the spec, and the hash resume matches on, is the same on every attempt."""
        spec = download_inputs(self.engine, self.store, self.claim.spec, self.claim.team_id, self.root, relative=True)
        path = self.root / "input" / "spec.json"
        path.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
        return path

    def _fetch_checkpoint(self) -> Path | None:
        def newest(s):
            ckpt = runs.newest_checkpoint(s, self.job_id)
            return (ckpt.step, ckpt.storage_key) if ckpt else None

        found = with_db_retry(self.engine, newest)
        if found is None:
            return None
        step, key = found
        dest = self.out / "checkpoints" / f"checkpoint-{step}"
        self.store.download_dir(key, dest)
        self._event(f"Resuming from the checkpoint at step {step}", data={"step": step})
        return dest

    def _spawn(self, spec_path: Path, resume: Path | None) -> None:
        self.events_path = self.root / "events.jsonl"
        self.events_path.touch()
        child = ["-m", "worker.child", "--spec", str(spec_path), "--workdir", str(self.out),
                 "--events", str(self.events_path)]
        if resume is not None:
            child += ["--resume-from", str(resume)]
        gpus = int((self.claim.spec.get("resources") or {}).get("gpus") or 1)
        cmd = [sys.executable, *(["-m", "core.training.launch", str(gpus)] if gpus > 1 else []), *child]
        repo = Path(__file__).resolve().parents[1]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")])),
               "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
        self.log_path = self.root / "child.log"
        with self.log_path.open("wb") as logf:
            self.proc = subprocess.Popen(
                cmd, cwd=self.root, env=env, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        threading.Thread(target=self._read_events, daemon=True, name=f"events-{self.job_id}").start()
        log.info("job %s attempt %s: training process %s started (%d process%s)", self.job_id, self.attempt,
                 self.proc.pid, gpus, "es" if gpus > 1 else "")

    def _read_events(self) -> None:
        """Tail the events file until the child is gone and every whole line is read."""
        with self.events_path.open("r", encoding="utf-8", errors="replace") as f:
            partial = ""
            while True:
                gone = self.proc.poll() is not None  # before reading: lines written before exit are read below
                while line := f.readline():
                    partial += line
                    if not partial.endswith("\n"):
                        break
                    line, partial = partial, ""
                    try:
                        self.events.put(json.loads(line))
                    except ValueError:
                        log.warning("job %s: unreadable line from the training process: %r", self.job_id, line[:200])
                if gone:
                    break
                time.sleep(0.1)
        self.events.put(None)

    def _supervise(self) -> None:
        next_beat = 0.0
        while True:
            try:
                msg = self.events.get(timeout=0.2)
            except queue.Empty:
                msg = {}
            if msg is None:
                break
            if msg:
                self._handle(msg)
            if time.monotonic() >= next_beat:
                next_beat = time.monotonic() + self.settings.heartbeat_seconds
                self._control(self._write(runs.heartbeat, self.settings.lease_seconds))
        try:
            self.proc.wait(timeout=KILL_GRACE_SECONDS * 3)
        except subprocess.TimeoutExpired:
            self._kill(self.killed_for or "hung")

    def _control(self, control: str | None) -> None:
        if control == "cancel" and self.killed_for is None:
            self._event("Stopping the training process (cancel requested)")
            self._kill("cancel")
        elif control == "pause" and not self.pause_sent and self.proc.poll() is None:
            from worker.child import PAUSE_SIGNAL

            self.pause_sent = True
            try:  # the group: under accelerate launch, the launcher passes it on to the ranks
                os.killpg(self.proc.pid, PAUSE_SIGNAL)
            except ProcessLookupError:
                pass
            self._event("Pause requested: checkpointing, then stopping")

    def _kill(self, why: str) -> None:
        """SIGTERM the child's process group, SIGKILL it after a grace period."""
        self.killed_for = self.killed_for or why
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, KILL_GRACE_SECONDS), (signal.SIGKILL, KILL_GRACE_SECONDS)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def shutdown(self, reason: str) -> None:
        """Called from another thread when the worker stops: kill the child; _conclude
        gives the job back to the queue as a new attempt later."""
        self._kill("shutdown")

    def _handle(self, msg: dict) -> None:
        kind = msg.get("type")
        if kind == "phase":
            self._write(runs.record_phase, msg["name"])
        elif kind == "metrics":
            self._write(runs.record_metrics, int(msg["step"]), msg.get("values") or {})
        elif kind == "checkpoint":
            self._upload_checkpoint(int(msg["step"]), Path(msg["path"]), msg.get("metrics") or {})
        elif kind == "event":
            self._event(msg.get("message", ""), msg.get("level", "info"), msg.get("data"))
        elif kind == "result":
            self.result = msg
        elif kind == "error":
            self.error = {"code": msg.get("code") or "training_error", "message": msg.get("message", ""), "param": None}

    def _upload_checkpoint(self, step: int, path: Path, metrics: dict) -> None:
        key = f"jobs/{self.job_id}/checkpoints/step-{step}"
        try:
            self.store.upload_dir(key, path)
        except OSError as e:  # e.g. rotated away by the trainer meanwhile; the next one will do
            self._event(f"Could not upload the checkpoint at step {step}: {e}", "warn")
            return
        self._write(runs.record_checkpoint, step, key, metrics)

    # --- the end -----------------------------------------------------------------------

    def _conclude(self) -> str:
        rc = self.proc.returncode
        if self.killed_for == "cancel":
            self._write(runs.finish, S.CANCELLED, message="Job cancelled; training process stopped")
            return S.CANCELLED.value
        if self.killed_for == "shutdown":
            return self._requeue()
        status = (self.result or {}).get("status")
        if rc == 0 and status == "succeeded":
            return self._succeed()
        if rc == 0 and status in ("paused", "cancelled"):
            try:
                self._write(runs.finish, status, message=f"Job {status} at step {self.result.get('global_step')}")
            except IllegalTransition:  # paused while a cancel arrived: the cancel wins
                self._write(runs.finish, S.CANCELLED, message="Job cancelled")
                return S.CANCELLED.value
            return status
        if self.error is None and rc is not None and rc < 0:
            return self._lost_attempt(rc)
        error = self.error or {"code": "training_process_crashed", "message": self._crash_message(rc), "param": None}
        self._write(runs.finish, S.FAILED, error, message=f"Training failed: {error['message']}")
        return S.FAILED.value

    def _lost_attempt(self, rc: int) -> str:
        """The child was killed by a signal nobody here sent (the OOM killer, a segfault in
        a kernel): like a lost worker, that costs the attempt, not the job, until the
        attempts run out. An error the child reported itself (bad input) fails at once."""
        why = self._crash_message(rc)
        if self.attempt < self.claim.max_attempts:
            self._write(runs.finish, S.QUEUED, data={"attempt": self.attempt, "return_code": rc},
                        message=f"Attempt {self.attempt} of {self.claim.max_attempts} lost: {why}; "
                                "re-queued to resume from its newest checkpoint")
            return S.QUEUED.value
        error = {"code": "training_process_crashed",
                 "message": f"attempt {self.attempt} of {self.claim.max_attempts} lost, giving up: {why}"[:2000], "param": None}
        self._write(runs.finish, S.FAILED, error, message=f"Training failed: {error['message']}")
        return S.FAILED.value

    def _crash_message(self, rc: int | None) -> str:
        try:
            lines = [ln for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            lines = []
        tail = " | ".join(lines[-3:]) if lines else "no output"
        how = f"killed by signal {-rc}" if rc is not None and rc < 0 else f"exit code {rc}"
        return f"the training process ended unexpectedly ({how}): {tail}"[:2000]

    def _requeue(self) -> str:
        """The worker is stopping: hand the job back so another attempt resumes it."""
        try:
            self._write(runs.finish, S.QUEUED, message="Worker stopped; job re-queued to resume from its newest checkpoint")
        except IllegalTransition:  # it was being cancelled anyway
            self._write(runs.finish, S.CANCELLED, message="Job cancelled; training process stopped")
            return S.CANCELLED.value
        return S.QUEUED.value

    def _succeed(self) -> str:
        self._write(runs.record_phase, "uploading")
        out = Path(self.result["output_dir"])
        uploaded = self._upload_artifacts(out)
        report = _read_json(out / "dataset_report.json") or {}
        team_name, latest = with_db_retry(
            self.engine, lambda s: (s.get(Team, self.claim.team_id).name, dict(s.get(Job, self.job_id).latest_metrics or {})))
        epochs = latest.get("epoch")
        total = (report.get("train_tokens") or {}).get("total_tokens")
        trained = round(total * epochs) if isinstance(total, int) and isinstance(epochs, (int, float)) else total
        name = fine_tuned_model_name(self.claim.spec["model"], team_name, self.claim.spec.get("suffix"), self.job_id)
        self._write(results.write_results_file, self.store)  # OpenAI's step_metrics.csv, listed in result_files
        self._write(
            runs.finish, S.SUCCEEDED, None, self.result.get("metrics") or {},
            message=f"Job succeeded: {len(uploaded)} artifacts uploaded", fine_tuned_model=name, trained_tokens=trained,
        )
        return S.SUCCEEDED.value

    def _upload_artifacts(self, out: Path) -> list[str]:
        """Every output file except checkpoints, under its relative name, plus adapter.tar.gz."""
        files = sorted(p for p in out.rglob("*") if p.is_file() and p.relative_to(out).parts[0] != "checkpoints")
        adapter = out / "adapter"
        if adapter.is_dir():
            tar = self.root / "adapter.tar.gz"
            with tarfile.open(tar, "w:gz") as t:
                t.add(adapter, arcname="adapter")
            files.append(tar)
        names = []
        next_beat = time.monotonic() + self.settings.heartbeat_seconds
        for path in files:
            name = "adapter.tar.gz" if path.parent == self.root else path.relative_to(out).as_posix()
            key = f"jobs/{self.job_id}/artifacts/{name}"
            stored = self.store.put_file(key, path)  # sized and hashed while it was copied
            self._write(runs.record_artifact, name, stored.bytes, stored.sha256, key)
            names.append(name)
            if time.monotonic() >= next_beat:  # big uploads must not let the lease lapse
                next_beat = time.monotonic() + self.settings.heartbeat_seconds
                self._write(runs.heartbeat, self.settings.lease_seconds)
        return names


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
