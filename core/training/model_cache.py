"""One model cache per worker host: a hub model is downloaded once, by one job, and every
later job on that host loads it from disk.

- The cache is huggingface_hub's own layout (`models--org--name/{blobs,refs,snapshots}`) in one
  directory (`TUNEFORGE_MODEL_CACHE`), so `huggingface-cli download --cache-dir` can pre-fill it
  and `from_pretrained` reads it unchanged.
- A file lock per model (the `filelock` package, which huggingface_hub itself uses) makes
  concurrent jobs queue behind one fetch: huggingface_hub's per-file locks stop two processes
  writing one blob, but not two jobs each walking the whole repository (metadata calls for every
  file, interleaved partial downloads, each reporting its own progress). Under this lock the
  second job finds the snapshot complete and touches the network only to resolve the revision.
- Progress is reported as (bytes done, bytes to fetch): the total comes from a dry run of the
  same download (what is not cached yet), the bytes from huggingface_hub's progress bar class.
- The revision is resolved to the commit hash actually fetched, for `spec.json`.
- Offline (no network, or `HF_HUB_OFFLINE=1`) with the model not cached is a
  `ModelNotCached` error naming the model, the revision and the cache directory.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core.training.errors import TrainingInputError

Progress = Callable[[int, int], None]  # (bytes done, bytes to fetch)


class ModelNotCached(TrainingInputError):
    """The model is not in the host's cache and the hub cannot be reached to fetch it."""


@dataclass(frozen=True)
class CachedModel:
    path: Path  # what from_pretrained loads: the snapshot directory, or the local model dir
    commit: str | None  # the commit hash the revision resolved to; None for a local directory
    fetched_bytes: int  # 0 when everything was already cached (or another job fetched it)


def ensure_model(
    model: str,
    revision: str | None,
    cache_dir: str | Path,
    *,
    progress: Progress | None = None,
    offline: bool | None = None,
    endpoint: str | None = None,
    token: str | bool | None = None,
    lock_timeout: float = -1,
) -> CachedModel:
    """The model on local disk, fetched into `cache_dir` at most once per host.

    `model` is a hub id or a local directory (returned as is: nothing to fetch or lock).
    `offline=None` follows huggingface_hub (HF_HUB_OFFLINE). `lock_timeout` < 0 waits for as
    long as another job's download takes.
    """
    if Path(model).is_dir():
        return CachedModel(Path(model), None, 0)
    from filelock import FileLock
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        DryRunError,
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.file_download import repo_folder_name

    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(model)
    except HFValidationError:
        raise TrainingInputError(f"model: {model!r} is neither a local directory nor a hub model id") from None
    cache = Path(cache_dir).expanduser().resolve()
    offline = constants.HF_HUB_OFFLINE if offline is None else offline
    revision = revision or "main"
    locks = cache / ".locks" / "tuneforge"
    locks.mkdir(parents=True, exist_ok=True)
    common = dict(
        revision=revision,
        cache_dir=cache,
        endpoint=endpoint,
        token=token,
        library_name="tuneforge",
        library_version=_version(),
        # The pid lets a hub proxy's log tell apart the jobs of one host.
        user_agent={"pid": str(os.getpid())},
    )
    total = 0
    with FileLock(locks / f"{repo_folder_name(repo_id=model, repo_type='model')}.lock", timeout=lock_timeout):
        try:
            todo, why = None, "offline mode"
            if not offline:
                try:
                    todo = snapshot_download(model, dry_run=True, tqdm_class=_byte_counter(None, 0), **common)
                except DryRunError as e:
                    if isinstance(e.__cause__, (RepositoryNotFoundError, GatedRepoError)):
                        raise e.__cause__ from None
                    why = _reason(e)  # the hub is unreachable: what is cached may still do
            if todo is None:
                path = snapshot_download(model, local_files_only=True, **common)
            else:
                total = sum(f.file_size or 0 for f in todo if f.will_download)
                path = snapshot_download(model, tqdm_class=_byte_counter(progress, total), **common)
        except (RepositoryNotFoundError, RevisionNotFoundError, GatedRepoError) as e:
            raise TrainingInputError(f"model: cannot fetch {model!r} (revision {revision}): {_reason(e)}") from None
        except (LocalEntryNotFoundError, OfflineModeIsEnabled):
            raise ModelNotCached(
                f"model: {model!r} (revision {revision}) is not in the model cache {cache} and the hub "
                f"({endpoint or constants.ENDPOINT}) cannot be reached ({why}); fetch it once where the hub is reachable, e.g. "
                f"`hf download {model} --revision {revision} --cache-dir {cache}`"
            ) from None
    if progress is not None and total:
        progress(total, total)
    return CachedModel(Path(path), Path(path).name, total)


def progress_events(event: Callable[[str, str, dict], None], model: str, *, every_fraction: float = 0.05,
                    every_seconds: float = 2.0, clock: Callable[[], float] | None = None) -> Progress:
    """A `Progress` that turns byte counts into job events ("downloading model: 1.2 GiB of
    16.1 GiB"), at most one per `every_fraction` of the total or `every_seconds`, and always
    the last one: a 16 GB download reports a few dozen lines, not one per chunk."""
    import time

    clock = clock or time.monotonic
    last = {"done": -1, "at": float("-inf")}

    def report(done: int, total: int) -> None:
        now = clock()
        finished = total and done >= total
        if finished and last["done"] >= total:
            return
        if not finished and done - last["done"] < every_fraction * total and now - last["at"] < every_seconds:
            return
        last.update(done=done, at=now)
        event("info", f"downloading model: {_size(done)} of {_size(total)}",
              {"model": model, "bytes_done": done, "bytes_total": total})

    return report


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _byte_counter(progress: Progress | None, total: int):
    """A tqdm class for snapshot_download that forwards the byte bar's updates to `progress`.

    snapshot_download makes several bars with this class (files fetched, bytes received, bytes
    written); only the written-bytes one ("huggingface_hub.snapshot_download") is forwarded.
    """
    from huggingface_hub.utils import tqdm as hf_tqdm

    class ByteCounter(hf_tqdm):
        def __init__(self, *args, **kwargs):
            self._forward = kwargs.get("name") == "huggingface_hub.snapshot_download" and progress is not None
            self._done = 0
            kwargs["disable"] = True  # workers have no terminal; progress goes to the job's events
            super().__init__(*args, **kwargs)

        def update(self, n=1):
            if self._forward and n:
                self._done += int(n)
                progress(min(self._done, total), total)
            return super().update(n)

    return ByteCounter


def _reason(e: BaseException) -> str:
    """The first line of the root cause (huggingface_hub wraps the connection error)."""
    while e.__cause__ is not None:
        e = e.__cause__
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tuneforge")
    except PackageNotFoundError:
        return "dev"
