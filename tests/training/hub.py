"""A local stand-in for the Hugging Face Hub: a real HTTP server speaking the few endpoints
`snapshot_download` uses (revision info, tree listing, file metadata, file download), serving
repositories from a directory in the hub cache's layout (`models--org--name/refs/main`,
`snapshots/<commit>/...`). It logs every request so tests can see who fetched what, and when.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


def write_repo(root: Path, repo_id: str, files: dict[str, bytes], commit: str | None = None) -> str:
    """Lay out one repository (branch main) in the hub cache layout; returns its commit hash."""
    commit = commit or hashlib.sha1(repr(sorted(files.items())).encode()).hexdigest()
    repo = root / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    for name, data in files.items():
        p = repo / "snapshots" / commit / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return commit


@dataclass
class Request:
    start: float
    end: float
    method: str
    path: str
    agent: str


@dataclass
class LocalHub:
    root: Path
    delay: float = 0.0  # seconds per file body, so a download takes long enough to race
    log: list[Request] = field(default_factory=list)
    url: str = ""

    def snapshot(self, repo_id: str, rev: str) -> tuple[str, Path] | None:
        repo = self.root / ("models--" + repo_id.replace("/", "--"))
        ref = repo / "refs" / rev
        commit = ref.read_text().strip() if ref.exists() else rev
        snap = repo / "snapshots" / commit
        return (commit, snap) if snap.is_dir() else None

    def start(self) -> LocalHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self._serve(body=False)

            def do_GET(self):
                self._serve(body=True)

            def _serve(self, body: bool):
                t0 = time.monotonic()
                try:
                    self._route(body)
                finally:
                    hub.log.append(Request(t0, time.monotonic(), self.command, urlparse(self.path).path,
                                           self.headers.get("user-agent", "")))

            def _json(self, obj, status=200, error_code=None):
                data = json.dumps(obj).encode()
                self.send_response(status)
                if error_code:  # how the hub tells a missing repo from a missing revision
                    self.send_header("X-Error-Code", error_code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _route(self, body: bool):
                parts = [unquote(p) for p in urlparse(self.path).path.strip("/").split("/")]
                if parts[:2] == ["api", "models"] and len(parts) >= 6:
                    repo_id, kind, rev = "/".join(parts[2:4]), parts[4], parts[5]
                    found = hub.snapshot(repo_id, rev)
                    if not found:
                        known = (hub.root / ("models--" + repo_id.replace("/", "--"))).is_dir()
                        return self._json({"error": "Not Found"}, 404, "RevisionNotFound" if known else "RepoNotFound")
                    commit, snap = found
                    files = sorted(p for p in snap.rglob("*") if p.is_file())
                    if kind == "revision":
                        return self._json({"id": repo_id, "sha": commit,
                                           "siblings": [{"rfilename": str(p.relative_to(snap))} for p in files]})
                    if kind == "tree":
                        return self._json([
                            {"type": "file", "path": str(p.relative_to(snap)), "size": p.stat().st_size,
                             "oid": hashlib.sha1(p.read_bytes()).hexdigest()}
                            for p in files
                        ])
                if len(parts) >= 5 and parts[2] == "resolve":
                    found = hub.snapshot("/".join(parts[:2]), parts[3])
                    f = found and found[1] / "/".join(parts[4:])
                    if not f or not f.is_file():
                        return self._json({"error": "Entry not found"}, 404)
                    data = f.read_bytes()
                    self.send_response(200)
                    self.send_header("X-Repo-Commit", found[0])
                    self.send_header("ETag", '"%s"' % hashlib.sha1(data).hexdigest())
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if body:
                        time.sleep(hub.delay)
                        self.wfile.write(data)
                    return
                self._json({"error": "not found"}, 404)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def downloads(self) -> list[Request]:
        return [r for r in self.log if r.method == "GET" and "/resolve/" in r.path]
