"""The request guard: who is asking is settled before a byte of the body is read, and a
body over its endpoint's limit is refused while it streams in.

FastAPI reads (and spools to disk) a whole request body before any dependency runs, so
an API-key dependency alone would let a client without a key make the server receive and
store gigabytes. This pure-ASGI middleware runs first, for every request that may carry a
body (anything but GET/HEAD/OPTIONS) under /v1/:

0. A NUL anywhere in the URL is refused (400): it can name nothing, and PostgreSQL
   cannot even compare text with it.
1. The API key is checked from the headers (401 otherwise); the team id is left in the
   request state for `api.deps.current_team`, so the key is looked up once.
2. A declared Content-Length over the limit is refused at once (413).
3. The body is counted as the app reads it; past the limit the read raises, and the
   answer is 413 whether the client sent Content-Length or not (chunked uploads too).

Every refusal that leaves body bytes unread says `Connection: close`, which makes uvicorn
drop the connection instead of reading and discarding the rest of the body.
"""

from __future__ import annotations

from fastapi import HTTPException
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session, sessionmaker
from starlette.datastructures import Headers

from api.errors import error_body
from core.errors import TuneforgeError
from core.services.auth import authenticate

MULTIPART_OVERHEAD = 64 * 1024  # boundaries, part headers and the small `purpose` field
BODILESS = ("GET", "HEAD", "OPTIONS")
UPLOAD_PATH = "/v1/files"


class BodyTooLarge(HTTPException):
    """Raised from the app's `receive` once a body passes its limit; FastAPI's body parsing
    turns any other exception into a 400, but lets its own HTTPException through."""

    def __init__(self, limit: int, what: str):
        super().__init__(413, f"The {what} is larger than this server's limit of {limit} bytes")
        self.param = "file" if what == "upload" else None

    def body(self) -> dict:
        return error_body(self.detail, "invalid_request_error", self.param, "request_too_large")


def bearer_key(headers: Headers) -> str | None:
    scheme, _, key = headers.get("authorization", "").partition(" ")
    return key.strip() if scheme.lower() == "bearer" and key.strip() else None


class RequestGuard:
    def __init__(self, app, *, sessions: sessionmaker[Session], request_limit: int, upload_limit: int):
        self.app, self.sessions = app, sessions
        self.request_limit, self.upload_limit = request_limit, upload_limit

    def _team_id(self, key: str | None) -> str:
        with self.sessions() as session:
            return authenticate(session, key).id

    def limit_for(self, method: str, path: str) -> tuple[int, BodyTooLarge]:
        """The bytes a body may have here, and the error that says so (naming the setting's value)."""
        if method == "POST" and path.rstrip("/") == UPLOAD_PATH:
            return self.upload_limit + MULTIPART_OVERHEAD, BodyTooLarge(self.upload_limit, "upload")
        return self.request_limit, BodyTooLarge(self.request_limit, "request body")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        if "\x00" in scope["path"] or b"%00" in scope["query_string"] or b"\x00" in scope["query_string"]:
            # No id, cursor or filter holds a NUL, and the database cannot compare with one.
            body = error_body("The URL may not contain NUL (%00) characters", "invalid_request_error", None, "invalid_value")
            await _refuse(scope, receive, send, 400, body)
            return
        if scope["method"] in BODILESS:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        try:
            team_id = await run_in_threadpool(self._team_id, bearer_key(headers))
        except TuneforgeError as e:
            await _refuse(scope, receive, send, e.status_code, e.to_dict(), {"WWW-Authenticate": "Bearer"})
            return
        scope.setdefault("state", {})["team_id"] = team_id

        limit, too_large = self.limit_for(scope["method"], scope["path"])
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            await _refuse(scope, receive, send, 413, too_large.body())
            return

        received = 0
        overflowed = False
        started = False

        async def counted_receive():
            nonlocal received, overflowed
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    overflowed = True
                    raise too_large
            return message

        async def closing_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if overflowed:
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, counted_receive, closing_send)
        except BodyTooLarge as exc:  # raised where no handler rendered it
            if started:
                raise
            await _refuse(scope, receive, send, 413, exc.body())


async def _refuse(scope, receive, send, status: int, body: dict, headers: dict | None = None) -> None:
    response = JSONResponse(body, status_code=status, headers={**(headers or {}), "Connection": "close"})
    await response(scope, receive, send)
