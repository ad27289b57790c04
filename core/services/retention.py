"""What is kept, and for how long: the one place for every rule that deletes data.

- A finished job keeps its artifacts (adapter, reports) for good, and of its checkpoints
  only what its team's policy says (default: the newest 2 and the best by eval loss) and
  the last three end-of-epoch ones (OpenAI keeps those as usable models); the
  others leave the store when the job ends (`prune_checkpoints`, called by the runner).
- A file uploaded with OpenAI's `expires_after` is gone for the API once it expires, and
  deleted (row marked, object removed) by the sweep -- unless a job that has not finished
  still needs it, which delays the deletion until the job ends (`expired_files`).
- Events and metric points of jobs finished longer ago than
  TUNEFORGE_EVENT_RETENTION_DAYS are deleted (off by default); the job keeps its
  status history, latest metrics and final result (`prune_history`).
- A worker's scratch space of an attempt is removed when the attempt ends; what a crash left
  behind (`stale_work_dirs`), and store objects no row refers to any more
  (`orphaned_objects`: a crash between the two deletes, an upload whose row never
  committed), are found here and removed by `tuneforge admin gc` and the workers' sweep.

Rows are deleted first and store objects after the commit: a crash in between leaves an
orphan that gc finds, never a row pointing at nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from core.models import Artifact, Checkpoint, File, Job, JobEvent, Metric, Team
from core.states import ACTIVE, TERMINAL

TERMINAL_VALUES = [s.value for s in TERMINAL]
ACTIVE_VALUES = [s.value for s in ACTIVE]
# An object younger than this may belong to an upload whose row is not committed yet.
ORPHAN_GRACE = timedelta(hours=1)
_ID_TIME = re.compile(r"^[a-z]+-([0-9a-f]{14})")


# --- checkpoints --------------------------------------------------------------------------


#: OpenAI keeps the checkpoints of the last three epochs as usable models; so do we, whatever
#: the team's policy (checkpoints tagged `completed_epoch` by the trainer).
EPOCH_CHECKPOINTS_KEPT = 3


def checkpoints_to_keep(checkpoints: Iterable[tuple[int, dict | None]], keep_last: int, keep_best: bool) -> set[int]:
    """Steps kept of (step, metrics) pairs: the newest `keep_last`, plus the one with the
    lowest eval loss when `keep_best` (checkpoints without an eval loss never count as best),
    plus the newest EPOCH_CHECKPOINTS_KEPT end-of-epoch checkpoints."""
    ckpts = sorted(checkpoints, key=lambda c: c[0])
    keep = {step for step, _m in ckpts[len(ckpts) - keep_last:]} if keep_last > 0 else set()
    epochs = [step for step, m in ckpts if isinstance((m or {}).get("completed_epoch"), int)]
    keep.update(epochs[-EPOCH_CHECKPOINTS_KEPT:])
    if keep_best:
        scored = [(m["eval_loss"], step) for step, m in ckpts
                  if isinstance((m or {}).get("eval_loss"), (int, float))]
        if scored:
            keep.add(min(scored)[1])
    return keep


def split_checkpoints(checkpoints: Iterable[Checkpoint], team: Team) -> tuple[list[Checkpoint], list[Checkpoint]]:
    """(kept newest first, beyond the policy) of one job's checkpoint rows by its team's policy:
    what the runner prunes and what /v1/models lists are the same split."""
    rows = list(checkpoints)
    keep = checkpoints_to_keep(((c.step, c.metrics) for c in rows), team.keep_checkpoints, team.keep_best_checkpoint)
    kept = sorted((c for c in rows if c.step in keep), key=lambda c: c.step, reverse=True)
    return kept, [c for c in rows if c.step not in keep]


def prune_checkpoints(session: Session, job_id: str) -> list[str]:
    """Delete the rows of a finished job's checkpoints beyond its team's policy; returns
    their store prefixes for the caller to delete after the commit. A job that has not
    ended keeps everything (a paused or re-queued job resumes from its newest one)."""
    job = session.get(Job, job_id)
    if job is None or job.status not in TERMINAL_VALUES:
        return []
    _kept, gone = split_checkpoints(session.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id)),
                                    session.get(Team, job.team_id))
    for c in gone:
        session.delete(c)
    session.flush()
    return [c.storage_key for c in gone]


def finished_jobs_to_prune(session: Session) -> list[str]:
    """Finished jobs holding more checkpoints than their team's policy keeps (a job cancelled
    while paused never had a runner to prune it; a runner may have crashed before it did)."""
    rows = session.execute(
        select(Checkpoint.job_id, Checkpoint.step, Checkpoint.metrics, Team.keep_checkpoints, Team.keep_best_checkpoint)
        .join(Job, Job.id == Checkpoint.job_id).join(Team, Team.id == Job.team_id)
        .where(Job.status.in_(TERMINAL_VALUES))
    ).all()
    by_job: dict[str, list] = {}
    for job_id, step, metrics, keep_last, keep_best in rows:
        by_job.setdefault(job_id, [keep_last, keep_best, []])[2].append((step, metrics))
    return sorted(job_id for job_id, (keep_last, keep_best, ckpts) in by_job.items()
                  if len(checkpoints_to_keep(ckpts, keep_last, keep_best)) < len(ckpts))


# --- history --------------------------------------------------------------------------------


def prune_history(session: Session, now: datetime, retention_days: int) -> tuple[int, int]:
    """Delete events (except status changes) and metric points of jobs that finished more
    than `retention_days` ago; returns (events, points) deleted."""
    old = select(Job.id).where(Job.status.in_(TERMINAL_VALUES), Job.finished_at < now - timedelta(days=retention_days))
    events = session.execute(
        delete(JobEvent).where(JobEvent.job_id.in_(old), JobEvent.type != "status").execution_options(synchronize_session=False)
    ).rowcount
    points = session.execute(delete(Metric).where(Metric.job_id.in_(old)).execution_options(synchronize_session=False)).rowcount
    return events, points


# --- what a crash left behind ---------------------------------------------------------------


def created_at_of(object_id: str) -> datetime | None:
    """The creation time encoded in one of our time-ordered ids (core.models.new_id)."""
    m = _ID_TIME.match(object_id)
    return datetime.fromtimestamp(int(m.group(1), 16) / 1e6, UTC) if m else None


@dataclass(frozen=True)
class Orphan:
    key: str  # an object key, or a prefix (a whole checkpoint directory)
    why: str


def orphaned_objects(session: Session, keys: Iterable[str], now: datetime) -> Iterator[Orphan]:
    """Which of the store's `keys` no row refers to. Objects of running jobs (a checkpoint
    uploads before its row is written) and files younger than ORPHAN_GRACE are left alone."""
    live_files = set(session.scalars(select(File.storage_key).where(File.deleted_at.is_(None))))
    checkpoints = set(session.scalars(select(Checkpoint.storage_key)))
    artifacts = set(session.scalars(select(Artifact.storage_key)))
    jobs = dict(session.execute(select(Job.id, Job.status)).all())
    seen_prefixes: set[str] = set()
    for key in keys:
        parts = key.split("/")
        if parts[0] == "files" and len(parts) == 3:
            if key in live_files:
                continue
            born = created_at_of(parts[2])
            if born is not None and now - born < ORPHAN_GRACE:
                continue
            yield Orphan(key, "file deleted or never registered")
        elif parts[0] == "jobs" and len(parts) >= 4:
            job_id, kind = parts[1], parts[2]
            if jobs.get(job_id) in ACTIVE_VALUES:
                continue
            if kind == "checkpoints":
                prefix = "/".join(parts[:4])
                if prefix not in checkpoints and prefix not in seen_prefixes:
                    seen_prefixes.add(prefix)
                    yield Orphan(prefix, "checkpoint pruned or of a deleted job")
            elif kind == "artifacts" and key not in artifacts:
                yield Orphan(key, "artifact of a deleted job or an unrecorded upload")


def stale_work_dirs(session: Session, work_dir: Path) -> Iterator[Path]:
    """Attempt dirs (<work_dir>/<job>/<attempt>) no live attempt owns: the job ended, moved
    on to a newer attempt, or is gone. A running attempt cleans its own dir when it ends;
    these are what a killed worker left, including copies of files deleted since."""
    if not work_dir.is_dir():
        return
    for job_dir in sorted(p for p in work_dir.iterdir() if p.is_dir()):
        job = session.get(Job, job_dir.name)
        for attempt_dir in sorted(p for p in job_dir.iterdir() if p.is_dir()):
            live = job is not None and job.status in ACTIVE_VALUES and str(job.attempt) == attempt_dir.name
            if not live:
                yield attempt_dir


# --- gc: all of the above, for `tuneforge admin gc` and the workers' sweep ------------------


def expired_files(session: Session, now: datetime, *, mark_deleted: bool) -> list[str]:
    """Files past their `expires_at` that no unfinished job needs: marked deleted (when
    `mark_deleted`); their store keys are returned for the caller to delete after the commit."""
    in_use = select(Job.training_file_id).where(Job.status.not_in(TERMINAL_VALUES)).union(
        select(Job.validation_file_id).where(Job.status.not_in(TERMINAL_VALUES), Job.validation_file_id.is_not(None)))
    rows = list(session.scalars(
        select(File).where(File.deleted_at.is_(None), File.expires_at.is_not(None), File.expires_at <= now, File.id.not_in(in_use))
    ))
    if mark_deleted:
        for f in rows:
            f.deleted_at = now
        session.flush()
    return [f.storage_key for f in rows]


@dataclass
class GcReport:
    pruned_checkpoints: list[str]
    orphaned_objects: list[Orphan]
    stale_work_dirs: list[Path]
    history: tuple[int, int] = (0, 0)
    expired_files: list[str] = field(default_factory=list)

    def lines(self, dry_run: bool) -> list[str]:
        verb = "would remove" if dry_run else "removed"
        out = [f"{verb} checkpoint {k} (beyond its team's retention policy)" for k in self.pruned_checkpoints]
        out += [f"{verb} store object {o.key} ({o.why})" for o in self.orphaned_objects]
        out += [f"{verb} work dir {p} (no live attempt)" for p in self.stale_work_dirs]
        out += [f"{verb} file {k} (expired)" for k in self.expired_files]
        if any(self.history):
            out.append(f"{verb} {self.history[0]} events and {self.history[1]} metric points of old jobs")
        return out


def collect_garbage(
    engine, store, work_dir: Path | None, *, dry_run: bool, now: datetime | None = None,
    retention_days: int | None = None, scan_store: bool = True,
) -> GcReport:
    """Apply every retention rule once; with dry_run, only say what would go. work_dir is
    this host's scratch space (None: leave it alone)."""
    import shutil

    from core.db import session_scope

    now = now or datetime.now(UTC)
    report = GcReport([], [], [])
    with session_scope(engine) as s:
        for job_id in finished_jobs_to_prune(s):
            if dry_run:
                job = s.get(Job, job_id)
                team = s.get(Team, job.team_id)
                rows = list(s.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id)))
                keep = checkpoints_to_keep(((c.step, c.metrics) for c in rows), team.keep_checkpoints, team.keep_best_checkpoint)
                report.pruned_checkpoints += [c.storage_key for c in rows if c.step not in keep]
            else:
                report.pruned_checkpoints += prune_checkpoints(s, job_id)
        if dry_run:
            s.rollback()
    for key in [] if dry_run else report.pruned_checkpoints:
        store.delete_prefix(key)
    with session_scope(engine) as s:
        report.expired_files = expired_files(s, now, mark_deleted=not dry_run)
    for key in [] if dry_run else report.expired_files:
        store.delete(key)
    if scan_store:
        with session_scope(engine) as s:
            keys = [*store.keys("files"), *store.keys("jobs")]
            report.orphaned_objects = list(orphaned_objects(s, keys, now))
        for o in [] if dry_run else report.orphaned_objects:
            (store.delete_prefix if "/checkpoints/" in o.key else store.delete)(o.key)
    if work_dir is not None:
        with session_scope(engine) as s:
            report.stale_work_dirs = list(stale_work_dirs(s, Path(work_dir)))
        for path in [] if dry_run else report.stale_work_dirs:
            shutil.rmtree(path, ignore_errors=True)
            try:
                path.parent.rmdir()
            except OSError:
                pass  # another attempt of the job is still there
    if retention_days:
        with session_scope(engine) as s:
            report.history = prune_history(s, now, retention_days)
            if dry_run:
                s.rollback()
    return report
