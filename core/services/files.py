"""Uploaded training data: stored in the artifact store, parsed once at upload.

A file is refused at upload (400 naming the line or row, 413 naming the limit) rather
than when a job reaches a GPU; the row count, columns and format stored here let job
creation check a template against the data without reading it again.
"""

from __future__ import annotations

import tempfile
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from core.config import Settings
from core.datafiles import SUPPORTED_SUFFIXES, DataFileError, DataLimitError, scan
from core.errors import Conflict, InvalidRequest, NotFound, TooLarge
from core.models import File, Job, new_id, utcnow
from core.services.pagination import Page, paginate
from core.states import TERMINAL
from core.storage import copy_hashing

PURPOSES = ("fine-tune",)
FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB" if n >= 1024 * 1024 else f"{n} bytes"


MAX_FILENAME = 255  # a file name, not a path: longer ones are refused, not truncated
#: OpenAI's bounds for `expires_after.seconds` (an hour to 30 days); its only anchor is created_at.
EXPIRY_SECONDS = (3600, 2592000)


def check_expiry(anchor: str | None, seconds: int | None) -> timedelta | None:
    """OpenAI's `expires_after` ({anchor: "created_at", seconds}) as a lifetime, or None."""
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise InvalidRequest(f"expires_after[anchor] must be 'created_at', got {anchor!r}", param="expires_after.anchor")
    lo, hi = EXPIRY_SECONDS
    if seconds is None or not lo <= seconds <= hi:
        raise InvalidRequest(f"expires_after[seconds] must be from {lo} to {hi} (an hour to 30 days), got {seconds!r}",
                             param="expires_after.seconds")
    return timedelta(seconds=seconds)


def live(now=None):
    """The files the API still shows: not deleted, and not past their expiry."""
    now = now or utcnow()
    return (File.deleted_at.is_(None)) & or_(File.expires_at.is_(None), File.expires_at > now)


def upload_file(
    session: Session, settings: Settings, store, team_id: str, *, filename: str, purpose: str, stream: BinaryIO,
    expires_after: timedelta | None = None,
) -> File:
    """Store and register an upload for `team_id`; refuses files that could not train."""
    if purpose not in PURPOSES:
        raise InvalidRequest(f"purpose must be one of {list(PURPOSES)}, got {purpose!r}", param="purpose")
    name = Path(filename or "").name
    if len(name) > MAX_FILENAME:
        raise InvalidRequest(f"the file name is {len(name)} characters long; at most {MAX_FILENAME} are allowed", param="file")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise InvalidRequest(f"the file name {name!r} contains control characters", param="file")
    suffix = Path(name).suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise InvalidRequest(
            f"file {name!r}: the name must end with one of {', '.join(SUPPORTED_SUFFIXES)} (it selects the parser)",
            param="file",
        )
    with tempfile.TemporaryDirectory(prefix="tuneforge-upload-") as tmp:
        local = Path(tmp) / f"upload{suffix}"
        try:
            with local.open("wb") as out:
                size, sha256 = copy_hashing(stream, out, settings.max_upload_bytes)
        except TooLarge:
            limit = settings.max_upload_bytes
            raise TooLarge(f"file {name!r} is larger than this server's upload limit of {_mib(limit)} ({limit} bytes)", param="file") from None
        if size == 0:
            raise InvalidRequest(f"file {name!r} is empty", param="file")
        try:
            summary = scan(local, settings.data_limits)
        except DataFileError as e:
            message = str(e).replace(str(local), name)
            message = message if message.startswith(name) else f"{name}: {message}"
            if isinstance(e, DataLimitError):
                raise TooLarge(message, param="file") from None
            raise InvalidRequest(message, param="file", code="invalid_file") from None
        file_id = new_id("file")
        key = f"files/{team_id}/{file_id}{suffix}"
        store.put_file(key, local)
    f = File(
        id=file_id,
        team_id=team_id,
        filename=name,
        purpose=purpose,
        bytes=size,
        sha256=sha256,
        storage_key=key,
        format=FORMATS[suffix],
        row_count=summary.row_count,
        columns=summary.columns,
        status="processed",
    )
    if expires_after is not None:
        f.created_at = utcnow()
        f.expires_at = f.created_at + expires_after
    try:
        with session.begin_nested():
            session.add(f)
    except Exception:
        # The row did not go in: the object must not stay behind in the store, unowned.
        store.delete(key)
        raise
    return f


def get_file(session: Session, team_id: str, file_id: str, *, param: str = "file_id") -> File:
    f = session.scalars(select(File).where(File.id == file_id, File.team_id == team_id, live())).one_or_none()
    if f is None:
        raise NotFound(f"No file with id {file_id!r}", param=param)
    return f


def list_files(
    session: Session, team_id: str, *, purpose: str | None = None, after: str | None = None, limit: int = 100, newest_first: bool = True
) -> Page[File]:
    stmt = select(File).where(File.team_id == team_id, live())
    if purpose:
        stmt = stmt.where(File.purpose == purpose)
    return paginate(session, stmt, File.id, after=after, limit=limit, newest_first=newest_first)


def delete_file(session: Session, store, team_id: str, file_id: str) -> File:
    """Removes the data; refused while an unfinished job still needs it."""
    f = get_file(session, team_id, file_id)
    user = session.scalars(
        select(Job.id).where(
            (Job.training_file_id == f.id) | (Job.validation_file_id == f.id),
            Job.status.not_in([s.value for s in TERMINAL]),
        )
    ).first()
    if user is not None:
        raise Conflict(f"File {f.id} is used by job {user}, which has not finished; cancel it first", param="file_id")
    f.deleted_at = utcnow()
    session.flush()
    store.delete(f.storage_key)
    return f
