"""Supervises one job attempt: claim, fetch inputs, spawn the training process, forward its
progress into SQL (fenced by the attempt), obey pause/cancel, upload what it produced.

Training never runs in the worker process: a child in its own process group does
(worker.process); files move through worker.transfers, which keep the lease alive while
they run; what the runner writes is in core.services.runs.

Layout of one attempt (Settings.work_dir/<job>/<attempt>/), removed when the attempt ends:
    input/      spec.json and the training/validation files, downloaded from the store
    out/        run()'s workdir: outputs, out/checkpoints/checkpoint-N (resumed ones pulled here)
    child.log   the child's stdout/stderr (its last lines become a crash's error message)
    events.jsonl  the child's progress, JSON lines, tailed while it runs
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import re
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from core.config import Settings
from core.db import get_engine, session_scope
from core.errors import IllegalTransition, InvalidRequest, StaleAttempt
from core.models import Job, Team
from core.services import results, retention, runs
from core.services.jobs import check_model_use
from core.states import TERMINAL, JobStatus
from core.storage import get_store
from worker.process import KILL_GRACE_SECONDS, TrainingProcess
from worker.transfers import InputInvalid, InputMissing, Transfers

log = logging.getLogger(__name__)
S = JobStatus

# Jobs this process is running now (job id -> JobRun): the worker heartbeat reports them
# and a warm shutdown stops them.
ACTIVE: dict[str, JobRun] = {}
_ACTIVE_LOCK = threading.Lock()

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


def fine_tuned_model_name(base: str, team: str, suffix: str | None, job_id: str) -> str:
    """OpenAI's `ft:<base>:<org>:<suffix>:<id>`; a local base is named by its directory."""
    if base.startswith(("/", ".", "~", "file:")):
        base = Path(base.removeprefix("file://")).name
    clean = lambda s: re.sub(r"[^A-Za-z0-9_.\-/]+", "-", s).strip("-")
    return f"ft:{clean(base)}:{clean(team)}:{clean(suffix or '')}:{job_id}"


@dataclass
class JobRun:
    """One attempt of one job, from its claim to its last write: check the model, fetch the
    inputs (and the checkpoint to resume from), start the training process, forward what it
    reports into SQL and the store while obeying pause/cancel, then conclude and clean up.
    Files move through `transfers` (which keep the lease alive), the child is a
    `TrainingProcess`, every SQL write is fenced by the attempt (`_write`)."""

    claim: runs.Claim
    settings: Settings
    engine: Engine
    store: Any
    child: TrainingProcess | None = None
    result: dict | None = None
    error: dict | None = None
    killed_for: str | None = None  # "cancel" | "shutdown" | "stale" | "error" | "hung"
    pause_sent: bool = False
    transfers: Transfers = field(init=False)

    def __post_init__(self) -> None:
        self.transfers = Transfers(self.job_id, self.store, self.engine, self._beat, self.settings.heartbeat_seconds,
                                   max_rows=self.settings.max_upload_rows, hub_cache=self.settings.hub_cache_dir)

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

    def _beat(self) -> str | None:
        """Renew the lease; returns what the client asked for meanwhile (pause / cancel)."""
        return self._write(runs.heartbeat, self.settings.lease_seconds)

    # --- the attempt -------------------------------------------------------------------

    def execute(self) -> str | None:
        self.root = Path(self.settings.work_dir).resolve() / self.job_id / str(self.attempt)
        self.out = self.root / "out"
        shutil.rmtree(self.root, ignore_errors=True)
        (self.root / "input").mkdir(parents=True)
        self.out.mkdir()
        status: str | None = None
        try:
            check_model_use(self.settings, self.claim.spec)  # the settings may have changed since create
            spec = self._fetch_inputs()
            resume = self._fetch_checkpoint()
            if self.killed_for == "shutdown":  # the worker began stopping while the inputs moved
                status = self._requeue("Worker stopped before training started; job re-queued")
            else:
                gpus = int((self.claim.spec.get("resources") or {}).get("gpus") or 1)
                self.child = TrainingProcess(self.root, spec, self.out, resume, gpus, self.job_id)
                log.info("job %s attempt %s: training process %s started (%d rank(s))", self.job_id, self.attempt,
                         self.child.pid, gpus)
                self._supervise()
                status = self._conclude()
        except StaleAttempt as e:
            log.warning("job %s: %s; stopping this attempt", self.job_id, e)
            self._kill("stale")
        except BaseException as e:
            log.exception("job %s attempt %s failed in the runner", self.job_id, self.attempt)
            self._kill("error")
            status = S.FAILED.value
            with contextlib.suppress(StaleAttempt, IllegalTransition):
                self._write(runs.finish, S.FAILED, _runner_error(e))
            if not isinstance(e, Exception):
                raise
        finally:
            # Whatever is worth keeping is in the store by now (checkpoints as they were
            # written, artifacts before `succeeded`); a paused or re-queued job resumes from
            # the store, possibly on another worker, so no status keeps the scratch space.
            shutil.rmtree(self.root, ignore_errors=True)
            with contextlib.suppress(OSError):
                self.root.parent.rmdir()  # the job's dir, once no attempt of it is left here
        if status in {s.value for s in TERMINAL}:
            self._apply_retention()
        return status

    def _fetch_inputs(self) -> Path:
        """The spec the child gets names its files relative to the attempt dir (its cwd),
        so the spec, and the hash resume matches on, is the same on every attempt."""
        spec = self.transfers.fetch_inputs(self.claim.spec, self.claim.team_id, self.root)
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
        dest = self.transfers.fetch_checkpoint(key, self.out / "checkpoints" / f"checkpoint-{step}")
        self._event(f"Resuming from the checkpoint at step {step}", data={"step": step})
        return dest

    def _supervise(self) -> None:
        next_beat = 0.0
        while True:
            try:
                msg = self.child.events.get(timeout=0.2)
            except queue.Empty:
                msg = {}
            if msg is None:
                break
            if msg:
                self._handle(msg)
            if self.transfers.control:  # heard while a checkpoint was uploading
                self._control(self.transfers.control)
                self.transfers.control = None
            if time.monotonic() >= next_beat:
                next_beat = time.monotonic() + self.settings.heartbeat_seconds
                self._control(self._beat())
        if not self.child.wait(KILL_GRACE_SECONDS * 3):
            self._kill(self.killed_for or "hung")

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
        try:
            key = self.transfers.upload_checkpoint(step, path)
        except OSError as e:  # e.g. rotated away by the trainer meanwhile; the next one will do
            self._event(f"Could not upload the checkpoint at step {step}: {e}", "warn")
            return
        self._write(runs.record_checkpoint, step, key, metrics)

    def _control(self, control: str | None) -> None:
        if control == "cancel" and self.killed_for is None:
            self._event("Stopping the training process (cancel requested)")
            self._kill("cancel")
        elif control == "pause" and not self.pause_sent and self.child.running():
            from worker.child import PAUSE_SIGNAL

            self.pause_sent = True
            self.child.signal_group(PAUSE_SIGNAL)
            self._event("Pause requested: checkpointing, then stopping")

    def _kill(self, why: str) -> None:
        self.killed_for = self.killed_for or why
        if self.child is not None:
            self.child.kill()

    def shutdown(self, reason: str) -> None:
        """Called from another thread when the worker stops: kill the child; _conclude
        gives the job back to the queue as a new attempt later."""
        self._kill("shutdown")

    # --- the end -----------------------------------------------------------------------

    def _conclude(self) -> str:
        rc = self.child.returncode
        if self.killed_for == "cancel":
            self._write(runs.finish, S.CANCELLED, message="Job cancelled; training process stopped")
            return S.CANCELLED.value
        if self.killed_for == "shutdown":
            return self._requeue("Worker stopped; job re-queued to resume from its newest checkpoint")
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
        return self._fail(self.error or {"code": "training_process_crashed", "message": self.child.crash_message(), "param": None})

    def _lost_attempt(self, rc: int) -> str:
        """The child was killed by a signal nobody here sent (the OOM killer, a segfault in
        a kernel): like a lost worker, that costs the attempt, not the job, until the
        attempts run out. An error the child reported itself (bad input) fails at once."""
        why, n, of = self.child.crash_message(), self.attempt, self.claim.max_attempts
        if n < of:
            self._write(runs.finish, S.QUEUED, data={"attempt": n, "return_code": rc},
                        message=f"Attempt {n} of {of} lost: {why}; re-queued to resume from its newest checkpoint")
            return S.QUEUED.value
        return self._fail({"code": "training_process_crashed", "message": f"attempt {n} of {of} lost, giving up: {why}"[:2000], "param": None})

    def _fail(self, error: dict) -> str:
        self._write(runs.finish, S.FAILED, error, message=f"Training failed: {error['message']}")
        return S.FAILED.value

    def _requeue(self, message: str) -> str:
        """The worker is stopping: hand the job back so another attempt resumes it."""
        try:
            self._write(runs.finish, S.QUEUED, message=message)
        except IllegalTransition:  # it was being cancelled anyway
            self._write(runs.finish, S.CANCELLED, message="Job cancelled; training process stopped")
            return S.CANCELLED.value
        return S.QUEUED.value

    def _succeed(self) -> str:
        self._write(runs.record_phase, "uploading")
        out = Path(self.result["output_dir"])
        uploaded = self.transfers.upload_artifacts(out, self.root)
        for u in uploaded:
            self._write(runs.record_artifact, u.name, u.stored.bytes, u.stored.sha256, u.key)
        team_name, latest = with_db_retry(
            self.engine, lambda s: (s.get(Team, self.claim.team_id).name, dict(s.get(Job, self.job_id).latest_metrics or {})))
        name = fine_tuned_model_name(self.claim.spec["model"], team_name, self.claim.spec.get("suffix"), self.job_id)
        self._write(results.write_results_file, self.store)  # OpenAI's step_metrics.csv, listed in result_files
        self._write(
            runs.finish, S.SUCCEEDED, None, self.result.get("metrics") or {},
            message=f"Job succeeded: {len(uploaded)} artifacts uploaded", fine_tuned_model=name,
            trained_tokens=trained_tokens(_read_json(out / "dataset_report.json") or {}, latest.get("epoch")),
        )
        return S.SUCCEEDED.value

    def _apply_retention(self) -> None:
        """Checkpoints beyond the team's policy leave the store once the job has ended; a
        failure here costs space, never the job (`tuneforge admin gc` catches up)."""
        try:
            for key in with_db_retry(self.engine, retention.prune_checkpoints, self.job_id):
                self.store.delete_prefix(key)
        except Exception:
            log.exception("job %s: pruning its checkpoints failed", self.job_id)


def trained_tokens(dataset_report: dict, epochs: Any) -> int | None:
    """Tokens of the training set times the epochs actually run (OpenAI's `trained_tokens`)."""
    total = (dataset_report.get("train_tokens") or {}).get("total_tokens")
    return round(total * epochs) if isinstance(total, int) and isinstance(epochs, (int, float)) else total


def _runner_error(e: BaseException) -> dict:
    """The job's error for a failure of the runner itself (not of the training process)."""
    if isinstance(e, InputMissing):
        return {"code": "file_not_found", "message": str(e), "param": None}
    if isinstance(e, InputInvalid):
        return {"code": "invalid_training_input", "message": str(e), "param": None}
    if isinstance(e, InvalidRequest):  # refused by the settings at attempt start
        return {"code": e.code or "invalid_request", "message": e.message, "param": e.param}
    return {"code": "runner_error", "message": f"{type(e).__name__}: {e}", "param": None}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
