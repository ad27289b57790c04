"""Moving one attempt's files between the artifact store and its work dir, with the job's
lease kept alive meanwhile.

A transfer can take longer than a lease (a multi-GB checkpoint over a slow link), and the
runner's supervise loop, which normally renews the lease, is blocked while it runs. Were the
lease to lapse, the scheduler would take the worker for dead and start a second attempt
beside the live one. So every transfer runs inside `LeaseKeeper`: a thread renewing the
lease every heartbeat until the transfer is done. A fenced heartbeat refused mid-transfer
(the job moved on) is raised once the transfer returns, so the runner stops as it would
after any stale write.

Layout of an attempt dir (see worker.runner): input/ (spec and data), out/ (the child's
workdir, out/checkpoints/checkpoint-N), and adapter.tar.gz made here before uploading.
"""

from __future__ import annotations

import json
import tarfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from core.db import session_scope
from core.errors import InvalidRequest
from core.hubdata import check_rows, is_hub_ref, parse_hub_ref
from core.models import File
from core.services import start_adapter
from core.storage import StoredObject



class InputMissing(ValueError):
    """A job's file was deleted between submission and run."""


class InputInvalid(ValueError):
    """A job's data, fetched from elsewhere than an upload, breaks the upload's rules."""


class LeaseKeeper:
    """`with LeaseKeeper(beat, every):` calls beat() every `every` seconds on a thread of its
    own until the block ends. beat renews the lease and returns what the client asked for
    meanwhile ("pause" / "cancel" / None); the last such answer is kept in `control` for the
    runner to act on after the transfer. An exception from beat (a stale attempt, a database
    away for longer than the retry budget) stops the thread and is raised when the block ends."""

    def __init__(self, beat: Callable[[], str | None] | None, every: float):
        self._beat, self._every = beat, every
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.control: str | None = None
        self.beats = 0

    def __enter__(self) -> LeaseKeeper:
        if self._beat is None:  # no lease to keep (a dry run)
            return self
        self._thread = threading.Thread(target=self._loop, daemon=True, name="lease-keeper")
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._done.wait(self._every):
            try:
                self.control = self._beat() or self.control
                self.beats += 1
            except BaseException as e:  # noqa: BLE001 - handed to the runner's thread in __exit__
                self.error = e
                return

    def __exit__(self, exc_type, exc, tb) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()
        if exc is None and self.error is not None:
            raise self.error


@dataclass
class Uploaded:
    name: str
    key: str
    stored: StoredObject


@dataclass
class Transfers:
    """The file moves of one attempt of `job_id`; `beat` renews its lease (fenced)."""

    job_id: str
    store: Any
    engine: Engine
    beat: Callable[[], str | None] | None = None
    heartbeat_seconds: float = 5.0
    max_rows: int = 5_000_000  # Settings.max_upload_rows: a hub dataset is held to the upload's limits
    hub_cache: Path | None = None
    control: str | None = None  # the newest pause/cancel request heard during a transfer

    def _kept_alive(self) -> LeaseKeeper:
        return LeaseKeeper(self.beat, self.heartbeat_seconds)

    def _note(self, keeper: LeaseKeeper) -> None:
        self.control = keeper.control or self.control

    # --- in ---------------------------------------------------------------------------

    def fetch_inputs(self, spec: dict, team_id: str, root: Path, *, relative: bool = True) -> dict:
        """The spec with its uploaded-file ids replaced by copies under root/input/. A run
        names them relative to root (the child's cwd) so the spec, and the hash resume
        matches on, is the same on every attempt; a dry run wants absolute paths."""
        spec = dict(spec)
        uploads: list[tuple[str, str, Path]] = []
        hub: list[tuple[str, str, Path]] = []
        with session_scope(self.engine) as s:  # closed before anything moves: no connection held for minutes
            for key in ("training_file", "validation_file"):
                ref = spec.get(key)
                if not ref:
                    continue
                if is_hub_ref(ref):
                    hub.append((key, ref, Path("input") / f"hub-{key}.jsonl"))
                    continue
                f = s.get(File, ref)
                if f is None or f.team_id != team_id or f.deleted_at is not None:
                    raise InputMissing(f"{key}: file {ref!r} no longer exists")
                uploads.append((key, f.storage_key, Path("input") / f"{f.id}{Path(f.storage_key).suffix or '.' + f.format}"))
            start = None
            if spec.get("from_checkpoint"):
                try:
                    start = start_adapter.resolve(s, team_id, spec["from_checkpoint"], spec["model"])
                except InvalidRequest as e:
                    raise InputMissing(e.message) from None
        with self._kept_alive() as keeper:
            for key, storage_key, rel in uploads:
                self.store.get_file(storage_key, root / rel)
                spec[key] = str(rel if relative else root / rel)
            for key, ref, rel in hub:
                self.fetch_hub_dataset(ref, key, root / rel)
                spec[key] = str(rel if relative else root / rel)
            if start is not None:  # the adapter to start from, as a PEFT adapter directory
                rel = Path("input") / "start-adapter"
                if start.prefix:
                    self.store.download_dir(start.prefix, root / rel)
                for name, storage_key in start.files.items():
                    self.store.get_file(storage_key, root / rel / name)
                spec["from_checkpoint"] = str(rel if relative else root / rel)
        self._note(keeper)
        return spec

    def fetch_hub_dataset(self, ref: str, key: str, dest: Path) -> Path:
        """The rows of a hub dataset as a JSONL file at dest, checked as an upload would be."""
        from core.datafiles import DataFileError
        from core.training.hubdata import load_rows

        try:
            rows = load_rows(parse_hub_ref(ref), self.max_rows, self.hub_cache)
            check_rows(rows, self.max_rows)
        except (DataFileError, ValueError, OSError) as e:
            raise InputInvalid(f"{key}: {ref}: {e}") from None
        dest.parent.mkdir(parents=True, exist_ok=True)
        with dest.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        return dest

    def fetch_checkpoint(self, storage_key: str, dest: Path) -> Path:
        with self._kept_alive() as keeper:
            self.store.download_dir(storage_key, dest)
        self._note(keeper)
        return dest

    # --- out --------------------------------------------------------------------------

    def upload_checkpoint(self, step: int, path: Path) -> str:
        key = f"jobs/{self.job_id}/checkpoints/step-{step}"
        with self._kept_alive() as keeper:
            self.store.upload_dir(key, path)
        self._note(keeper)
        return key

    def upload_artifacts(self, out: Path, scratch: Path) -> list[Uploaded]:
        """Every output file except checkpoints, under its relative name, plus
        adapter.tar.gz (built in `scratch`) for a one-click download of the adapter."""
        files = [(p.relative_to(out).as_posix(), p) for p in sorted(out.rglob("*"))
                 if p.is_file() and p.relative_to(out).parts[0] != "checkpoints"]
        uploaded = []
        with self._kept_alive() as keeper:
            adapter = out / "adapter"
            if adapter.is_dir():
                tar = scratch / "adapter.tar.gz"
                with tarfile.open(tar, "w:gz") as t:
                    t.add(adapter, arcname="adapter")
                files.append(("adapter.tar.gz", tar))
            for name, path in files:
                key = f"jobs/{self.job_id}/artifacts/{name}"
                uploaded.append(Uploaded(name, key, self.store.put_file(key, path)))  # sized and hashed while copied
        self._note(keeper)
        return uploaded
