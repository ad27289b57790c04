"""A client of tuneforge's public HTTP API for the terminal (`tuneforge jobs ...`).

It uses only what any other client may use: the /v1 routes with `Authorization: Bearer`.
Where to connect comes from TUNEFORGE_API_URL / TUNEFORGE_API_KEY, or else the embedded
home that `tuneforge up` writes (<home>/api_key, <home> from TUNEFORGE_HOME, default
.tuneforge). Errors come back as ApiError carrying the server's message and field.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import httpx
import yaml
from httpx_sse import connect_sse

DEFAULT_URL = "http://127.0.0.1:8000"


class ApiError(Exception):
    """A refusal from the server (its message and field), or a problem reaching it."""

    def __init__(self, message: str, status: int | None = None, param: str | None = None):
        super().__init__(message)
        self.message, self.status, self.param = message, status, param


@dataclass
class Connection:
    base_url: str
    key: str


@dataclass
class StreamCursor:
    """Where a job's event stream got to (the server's SSE id), kept across reconnects."""

    last_event_id: str | None = None


def connection_from_env(environ: Mapping[str, str] | None = None) -> Connection:
    env = os.environ if environ is None else environ
    url = env.get("TUNEFORGE_API_URL") or env.get("TUNEFORGE_PUBLIC_URL") or DEFAULT_URL
    key = env.get("TUNEFORGE_API_KEY")
    if not key:
        key_file = Path(env.get("TUNEFORGE_HOME") or ".tuneforge") / "api_key"
        try:
            key = key_file.read_text(encoding="utf-8").strip()
        except OSError:
            raise ApiError(f"no API key: set TUNEFORGE_API_KEY, or run `tuneforge up` so that {key_file} exists") from None
    return Connection(url.rstrip("/"), key)


def load_spec(path: Path, training_file: Path | None = None) -> tuple[dict[str, Any], Path | None]:
    """A job request from a YAML/JSON spec (the same fields as POST /v1/fine_tuning/jobs).

    Returns (body, file to upload). `training_file` wins; otherwise a spec whose
    training_file is a local path (not a file id or hf:// reference) names the file to
    upload, relative to the spec's directory."""
    try:
        body = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ApiError(f"{path}: not valid YAML/JSON: {e}") from None
    if not isinstance(body, dict):
        raise ApiError(f"{path}: a spec is a mapping of fields (model, training_file, ...)")
    if training_file is not None:
        return body, training_file
    ref = body.get("training_file")
    if isinstance(ref, str) and not ref.startswith(("file-", "hf://")):
        local = Path(ref) if Path(ref).is_absolute() else path.parent / ref
        if not local.is_file():
            raise ApiError(f"training_file {ref!r} is neither a file id nor a file next to {path}")
        return body, local
    return body, None


class Client:
    def __init__(self, base_url: str, key: str, timeout: float = 60, transport: httpx.BaseTransport | None = None):
        self.http = httpx.Client(
            base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=timeout, transport=transport
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Client:
        c = connection_from_env(environ)
        return cls(c.base_url, c.key)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs) -> Any:
        try:
            res = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as e:
            raise ApiError(f"cannot reach {self.http.base_url}: {e}") from None
        return _checked(res).json()

    # --- files and jobs

    def upload_file(self, path: Path) -> dict:
        with path.open("rb") as f:
            return self._call("POST", "/v1/files", data={"purpose": "fine-tune"}, files={"file": (path.name, f)})

    def create_job(self, body: dict[str, Any]) -> dict:
        return self._call("POST", "/v1/fine_tuning/jobs", json=body)

    def list_jobs(self, limit: int = 20, after: str | None = None) -> dict:
        return self._call("GET", "/v1/fine_tuning/jobs", params={"limit": limit, **({"after": after} if after else {})})

    def get_job(self, job_id: str) -> dict:
        return self._call("GET", f"/v1/fine_tuning/jobs/{job_id}")

    def action(self, job_id: str, action: str) -> dict:
        """cancel, pause or resume."""
        return self._call("POST", f"/v1/fine_tuning/jobs/{job_id}/{action}")

    def events(self, job_id: str, after: str | None = None, limit: int = 100) -> list[dict]:
        params = {"order": "asc", "limit": limit, **({"after": after} if after else {})}
        return self._call("GET", f"/v1/fine_tuning/jobs/{job_id}/events", params=params)["data"]

    def artifacts(self, job_id: str) -> list[dict]:
        return self._call("GET", f"/v1/fine_tuning/jobs/{job_id}/artifacts")["data"]

    def stream(self, job_id: str, cursor: StreamCursor | None = None) -> Iterator[tuple[str, dict]]:
        """(kind, data) from the job's event stream — `status`, `event`, `metrics` — until
        the server ends it (the job finished) or the connection drops. Pass the same
        `cursor` to the next call after a drop: it sends the last id seen as `Last-Event-ID`,
        so the server resumes there instead of sending the whole history again."""
        import json

        cursor = cursor if cursor is not None else StreamCursor()
        headers = {"Last-Event-ID": cursor.last_event_id} if cursor.last_event_id else {}
        try:
            with connect_sse(self.http, "GET", f"/v1/fine_tuning/jobs/{job_id}/stream", headers=headers,
                             timeout=httpx.Timeout(60, read=None)) as src:
                if src.response.status_code != 200:
                    src.response.read()
                    _checked(src.response)
                for sse in src.iter_sse():
                    if sse.id:
                        cursor.last_event_id = sse.id
                    if sse.data:
                        yield sse.event, json.loads(sse.data)
        except httpx.HTTPError as e:
            raise ApiError(f"stream of {job_id} broke: {e}") from None

    # --- downloads

    def pick_artifacts(self, job_id: str, name: str | None) -> list[dict]:
        """`name` exactly, else `name`.tar.gz (so "adapter" is the adapter archive), else
        every file under `name`/; None means every artifact."""
        arts = self.artifacts(job_id)
        if name is None:
            return arts
        for pick in ([a for a in arts if a["name"] == name], [a for a in arts if a["name"] == f"{name}.tar.gz"],
                     [a for a in arts if a["name"].startswith(name.rstrip("/") + "/")]):
            if pick:
                return pick
        raise ApiError(f"job {job_id} has no artifact {name!r} (it has: {', '.join(a['name'] for a in arts) or 'none'})",
                       param="artifact")

    def download(self, job_id: str, artifact: dict, out_dir: Path) -> Path:
        """Fetch through a signed link (no key sent to it: the link may point at S3) into
        out_dir/<name>, checking the sha256 the API listed; a mismatch leaves no file."""
        name = PurePosixPath(artifact["name"])
        if name.is_absolute() or ".." in name.parts:
            raise ApiError(f"refusing artifact name {artifact['name']!r}")
        link = self._call("GET", f"/v1/fine_tuning/jobs/{job_id}/artifacts/{artifact['name']}")["url"]
        target = out_dir.joinpath(*name.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".part")
        digest = hashlib.sha256()
        try:
            with httpx.stream("GET", link, timeout=httpx.Timeout(60, read=300), follow_redirects=True) as res:
                _checked(res, read=True)
                with partial.open("wb") as f:
                    for chunk in res.iter_bytes(1024 * 1024):
                        digest.update(chunk)
                        f.write(chunk)
        except httpx.HTTPError as e:
            partial.unlink(missing_ok=True)
            raise ApiError(f"download of {artifact['name']} broke: {e}") from None
        if digest.hexdigest() != artifact["sha256"]:
            partial.unlink(missing_ok=True)
            raise ApiError(f"{artifact['name']}: sha256 {digest.hexdigest()} does not match the listed {artifact['sha256']}")
        partial.replace(target)
        return target


def _checked(res: httpx.Response, read: bool = False) -> httpx.Response:
    if res.is_success:
        return res
    if read:
        res.read()
    try:
        err = res.json()["error"]
        raise ApiError(err["message"], res.status_code, err.get("param"))
    except (ValueError, KeyError, TypeError):
        raise ApiError(f"HTTP {res.status_code} from {res.request.url}: {res.text[:300]}", res.status_code) from None
