"""Artifact storage: one interface over a local directory (embedded mode) and S3/MinIO (deployments).

Checkpoints, adapters and uploaded files all go through `ArtifactStore`, so the worker, the
API and the training process never care where bytes live. Keys are validated in one place
(`check_key`) because they end up as file paths: a key must never escape the store's root.
Keys are used as paths on both backends, so one key is never also the prefix of others
(a file cannot be a directory); prefix operations match whole segments (`runs/1` never
touches `runs/10/...`).

Download links: S3 signs them itself (presigned GET, expiry enforced by S3). The local store
has no server of its own, so it signs a token that the API's `GET /v1/downloads/{token}`
route checks with `verify_download_token` before streaming the file.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import shutil
import tempfile
import time
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any, BinaryIO, Protocol
from urllib.parse import quote, urlsplit

from itsdangerous import BadData, URLSafeSerializer

from core.config import Settings, get_settings
from core.errors import Forbidden, InvalidRequest, NotFound, TooLarge

CHUNK_BYTES = 1024 * 1024
# SigV4 presigned URLs cannot live longer than a week; the local tokens keep the same bound so
# switching backends never changes what a caller may ask for.
MAX_LINK_SECONDS = 7 * 24 * 3600
# Names of in-flight local writes; refused as key segments so listings can skip them safely.
_PARTIAL = ".tuneforge-part-"
_TOKEN_SALT = "tuneforge.download"


@dataclass(frozen=True)
class StoredObject:
    key: str
    bytes: int
    sha256: str


@dataclass(frozen=True)
class DownloadToken:
    key: str
    expires_at: datetime
    filename: str | None


class ArtifactStore(Protocol):
    def put_file(self, key: str, path: Path) -> StoredObject: ...
    def put_stream(self, key: str, stream: BinaryIO, max_bytes: int | None = None) -> StoredObject: ...
    def put_bytes(self, key: str, data: bytes) -> StoredObject: ...
    def get_file(self, key: str, dest: Path) -> Path: ...
    def open(self, key: str) -> BinaryIO: ...
    def upload_dir(self, prefix: str, src: Path) -> list[StoredObject]: ...
    def download_dir(self, prefix: str, dest: Path) -> Path: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...
    def delete_prefix(self, prefix: str) -> None: ...
    def keys(self, prefix: str) -> Iterator[str]: ...
    def signed_url(self, key: str, ttl_seconds: int, filename: str | None = None) -> tuple[str, datetime]: ...


def check_key(key: str) -> str:
    """Refuse anything that could name a path outside the store, or collide with in-flight writes."""
    problem = None
    if not isinstance(key, str) or not key:
        problem = "it is empty"
    elif "\\" in key or "\x00" in key:
        problem = "it contains a backslash or NUL"
    elif key.startswith("/"):
        problem = "it is absolute"
    else:
        for part in key.split("/"):
            if part in ("", ".", ".."):
                problem = "it has an empty, '.' or '..' segment"
                break
            if part.startswith(_PARTIAL):
                problem = f"segments starting with {_PARTIAL!r} are reserved"
                break
    if problem:
        raise InvalidRequest(f"invalid artifact key {key!r}: {problem}", param="key", code="invalid_key")
    return key


def content_disposition(filename: str) -> str:
    """An attachment header that survives any filename: ASCII fallback plus RFC 5987 UTF-8 form."""
    clean = "".join(c for c in filename if unicodedata.category(c)[0] != "C")
    fallback = "".join(c for c in clean if c.isascii() and c not in '"\\') or "download"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(clean, safe='')}"


def _check_ttl(ttl_seconds: int) -> None:
    if not 1 <= ttl_seconds <= MAX_LINK_SECONDS:
        raise ValueError(f"ttl_seconds must be between 1 and {MAX_LINK_SECONDS}, got {ttl_seconds}")


def copy_hashing(src: BinaryIO, sink: BinaryIO | None, max_bytes: int | None) -> tuple[int, str]:
    """One pass over `src`: count, hash and (optionally) copy, stopping as soon as the limit is passed."""
    digest = hashlib.sha256()
    size = 0
    while chunk := src.read(CHUNK_BYTES):
        size += len(chunk)
        if max_bytes is not None and size > max_bytes:
            raise TooLarge(f"upload exceeds the limit of {max_bytes} bytes")
        digest.update(chunk)
        if sink is not None:
            sink.write(chunk)
    return size, digest.hexdigest()


@contextmanager
def _atomic_file(dest: Path) -> Iterator[BinaryIO]:
    """Readers see the old file or the whole new one, never a prefix; failures leave nothing."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=_PARTIAL)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# ---- local download tokens -------------------------------------------------------------------


def _serializer(secret: str) -> URLSafeSerializer:
    if not secret:
        raise RuntimeError("signing download links needs TUNEFORGE_SECRET_KEY")
    return URLSafeSerializer(secret, salt=_TOKEN_SALT, signer_kwargs={"digest_method": hashlib.sha256})


def sign_download_token(key: str, secret: str, expires_at: datetime, filename: str | None = None) -> str:
    # Milliseconds, not whole seconds: rounding down made a link live up to 1 s less than its TTL.
    payload = {"k": check_key(key), "e": round(expires_at.timestamp(), 3), "f": filename}
    return _serializer(secret).dumps(payload)


def decode_download_token(token: str, secret: str) -> DownloadToken:
    """The whole grant (the download route also needs the filename); Forbidden unless intact and unexpired."""
    if not secret:
        raise Forbidden("download links are not enabled on this server")
    try:
        payload = _serializer(secret).loads(token)
        key, expires, filename = payload["k"], payload["e"], payload["f"]
        check_key(key)
    except (BadData, KeyError, TypeError, InvalidRequest):
        raise Forbidden("download link is invalid") from None
    if isinstance(expires, bool) or not isinstance(expires, (int, float)) or not time.time() < expires < math.inf:
        raise Forbidden("download link has expired")
    return DownloadToken(key=key, expires_at=datetime.fromtimestamp(expires, UTC), filename=filename)


def verify_download_token(token: str, secret: str) -> str:
    return decode_download_token(token, secret).key


# ---- implementations -------------------------------------------------------------------------


class _StoreBase(ABC):
    """What both backends derive from their primitives (put_stream, get_file, _keys_under)."""

    def put_bytes(self, key: str, data: bytes) -> StoredObject:
        return self.put_stream(key, io.BytesIO(data))

    def put_file(self, key: str, path: Path) -> StoredObject:
        with open(path, "rb") as f:
            return self.put_stream(key, f)

    def upload_dir(self, prefix: str, src: Path) -> list[StoredObject]:
        check_key(prefix)
        if not src.is_dir():
            raise FileNotFoundError(f"not a directory: {src}")
        files = sorted(p for p in src.rglob("*") if p.is_file())
        return [self.put_file(f"{prefix}/{p.relative_to(src).as_posix()}", p) for p in files]

    def download_dir(self, prefix: str, dest: Path) -> Path:
        """Raises NotFound when the prefix holds nothing: an empty checkpoint is a bug, not a result."""
        found = False
        for key in self._keys_under(check_key(prefix)):
            rel = check_key(key[len(prefix) + 1 :])  # objects written by others could hold '..'
            self.get_file(key, dest / rel)
            found = True
        if not found:
            raise NotFound(f"no artifacts under {prefix!r}", param="prefix")
        return dest

    def keys(self, prefix: str) -> Iterator[str]:
        """Every object key below `prefix/` (what `tuneforge admin gc` compares with the rows)."""
        return self._keys_under(check_key(prefix))

    @abstractmethod
    def put_stream(self, key: str, stream: BinaryIO, max_bytes: int | None = None) -> StoredObject: ...

    @abstractmethod
    def get_file(self, key: str, dest: Path) -> Path: ...

    @abstractmethod
    def _keys_under(self, prefix: str) -> Iterator[str]:
        """Keys (relative to the store) of every object below `prefix/`."""


class LocalStore(_StoreBase):
    def __init__(self, root: Path, *, public_url: str, secret: str):
        self.root = Path(root).resolve()
        self.public_url = public_url.rstrip("/")
        self._secret = secret

    def local_path(self, key: str) -> Path:
        """For the download route, which can serve a file directly (ranges, sendfile)."""
        return self.root / check_key(key)

    def put_stream(self, key: str, stream: BinaryIO, max_bytes: int | None = None) -> StoredObject:
        path = self.local_path(key)
        with _atomic_file(path) as f:
            size, sha = copy_hashing(stream, f, max_bytes)
        return StoredObject(key=key, bytes=size, sha256=sha)

    def get_file(self, key: str, dest: Path) -> Path:
        with self.open(key) as src, _atomic_file(dest) as f:
            shutil.copyfileobj(src, f, CHUNK_BYTES)
        return dest

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self.local_path(key), "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound(f"artifact {key!r} not found", param="key") from None

    def exists(self, key: str) -> bool:
        return self.local_path(key).is_file()

    def delete(self, key: str) -> None:
        with suppress(FileNotFoundError, IsADirectoryError, NotADirectoryError):
            self.local_path(key).unlink()

    def delete_prefix(self, prefix: str) -> None:
        with suppress(FileNotFoundError, NotADirectoryError):
            shutil.rmtree(self.local_path(prefix))

    def _keys_under(self, prefix: str) -> Iterator[str]:
        base = self.local_path(prefix)
        if base.is_dir():
            for p in sorted(base.rglob("*")):
                if p.is_file() and not p.name.startswith(_PARTIAL):
                    yield p.relative_to(self.root).as_posix()

    def signed_url(self, key: str, ttl_seconds: int, filename: str | None = None) -> tuple[str, datetime]:
        _check_ttl(ttl_seconds)
        expires_at = datetime.fromtimestamp(round(time.time() + ttl_seconds, 3), UTC)
        token = sign_download_token(key, self._secret, expires_at, filename)
        return f"{self.public_url}/v1/downloads/{token}", expires_at


class S3Store(_StoreBase):
    """Objects under `s3://bucket/prefix/`; boto3 is imported on first use so the API starts fast."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        public_endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
    ):
        self.bucket = bucket
        self.prefix = check_key(prefix) if prefix else ""
        self._endpoint_url = endpoint_url
        self._public_endpoint_url = public_endpoint_url
        self._region = region
        self._credentials = {}
        if access_key_id and secret_access_key:
            self._credentials = {"aws_access_key_id": access_key_id, "aws_secret_access_key": secret_access_key}

    def _make_client(self, endpoint_url: str | None) -> Any:
        import boto3
        from botocore.config import Config

        config = Config(
            signature_version="s3v4",
            # MinIO and most self-hosted servers have no per-bucket DNS names.
            s3={"addressing_style": "path"} if endpoint_url else {},
            retries={"mode": "standard", "max_attempts": 5},
            connect_timeout=10,
            read_timeout=120,
        )
        return boto3.client(
            "s3", endpoint_url=endpoint_url, region_name=self._region, config=config, **self._credentials
        )

    @cached_property
    def _client(self) -> Any:
        return self._make_client(self._endpoint_url)

    @cached_property
    def _presigner(self) -> Any:
        """The host is part of the signature, so links are signed for the address clients use."""
        if self._public_endpoint_url and self._public_endpoint_url != self._endpoint_url:
            return self._make_client(self._public_endpoint_url)
        return self._client

    def _object_key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    @staticmethod
    def _is_missing(exc: Exception) -> bool:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code")
        return code in ("404", "NoSuchKey", "NotFound")

    def put_file(self, key: str, path: Path) -> StoredObject:
        # Hash first, then let boto3 upload the file itself (multipart, parallel) instead of spooling it.
        with open(path, "rb") as f:
            size, sha = copy_hashing(f, None, None)
        self._client.upload_file(str(path), self.bucket, self._object_key(key))
        return StoredObject(key=key, bytes=size, sha256=sha)

    def put_stream(self, key: str, stream: BinaryIO, max_bytes: int | None = None) -> StoredObject:
        # Spool first: the limit is checked before anything reaches the bucket, so an oversized
        # upload leaves no object and no dangling multipart upload behind.
        object_key = self._object_key(key)
        with tempfile.SpooledTemporaryFile(max_size=8 * CHUNK_BYTES) as spool:
            size, sha = copy_hashing(stream, spool, max_bytes)
            spool.seek(0)
            self._client.upload_fileobj(spool, self.bucket, object_key)
        return StoredObject(key=key, bytes=size, sha256=sha)

    def get_file(self, key: str, dest: Path) -> Path:
        from botocore.exceptions import ClientError

        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            # s3transfer writes to a temporary name and renames, so dest is never a partial file.
            self._client.download_file(self.bucket, self._object_key(key), str(dest))
        except ClientError as e:
            if self._is_missing(e):
                raise NotFound(f"artifact {key!r} not found", param="key") from None
            raise
        return dest

    def open(self, key: str) -> BinaryIO:
        from botocore.exceptions import ClientError

        try:
            return self._client.get_object(Bucket=self.bucket, Key=self._object_key(key))["Body"]
        except ClientError as e:
            if self._is_missing(e):
                raise NotFound(f"artifact {key!r} not found", param="key") from None
            raise

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self._client.head_object(Bucket=self.bucket, Key=self._object_key(key))
        except ClientError as e:
            if self._is_missing(e):
                return False
            raise
        return True

    def delete(self, key: str) -> None:
        self._client.delete_object(Bucket=self.bucket, Key=self._object_key(key))

    def _pages(self, prefix: str) -> Iterator[list[dict]]:
        paginator = self._client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._object_key(prefix) + "/"):
            yield page.get("Contents", [])

    def delete_prefix(self, prefix: str) -> None:
        for contents in self._pages(prefix):
            if not contents:
                continue
            result = self._client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": o["Key"]} for o in contents], "Quiet": True}
            )
            if result.get("Errors"):
                first = result["Errors"][0]
                raise RuntimeError(f"could not delete {first.get('Key')!r}: {first.get('Message')}")

    def _keys_under(self, prefix: str) -> Iterator[str]:
        strip = len(self.prefix) + 1 if self.prefix else 0
        for contents in self._pages(prefix):
            for o in contents:
                yield o["Key"][strip:]

    def signed_url(self, key: str, ttl_seconds: int, filename: str | None = None) -> tuple[str, datetime]:
        _check_ttl(ttl_seconds)
        params = {"Bucket": self.bucket, "Key": self._object_key(key)}
        if filename:
            params["ResponseContentDisposition"] = content_disposition(filename)
        expires_at = datetime.now(UTC) + timedelta(seconds=ttl_seconds)
        url = self._presigner.generate_presigned_url("get_object", Params=params, ExpiresIn=ttl_seconds)
        return url, expires_at


def get_store(settings: Settings | None = None) -> ArtifactStore:
    """The store named by TUNEFORGE_ARTIFACTS_URL. Cheap (no network); build once per process."""
    s = settings or get_settings()
    url = urlsplit(s.artifacts_url)
    if url.scheme == "file" and (url.netloc or url.path):
        # file:///abs/dir -> /abs/dir; file://relative/dir -> relative/dir (against the cwd).
        return LocalStore(Path(url.netloc + url.path), public_url=s.public_url, secret=s.secret_key)
    if url.scheme == "s3" and url.netloc:
        return S3Store(
            url.netloc,
            url.path.strip("/"),
            endpoint_url=s.s3_endpoint_url,
            public_endpoint_url=s.s3_public_endpoint_url,
            region=s.s3_region,
            access_key_id=s.s3_access_key_id,
            secret_access_key=s.s3_secret_access_key,
        )
    raise ValueError(f"TUNEFORGE_ARTIFACTS_URL must be file://<dir> or s3://<bucket>[/<prefix>], got {s.artifacts_url!r}")
