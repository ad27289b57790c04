"""Refuse an upload whose declared size is over the limit before reading its body.

FastAPI parses a multipart form (spooling the file to disk) before any route code runs,
so the service's own byte count (core.services.files) would only stop an oversize upload
after receiving all of it. Chunked uploads without Content-Length still meet that check.
"""

from __future__ import annotations

import json

from api.errors import error_body

MULTIPART_OVERHEAD = 64 * 1024  # boundaries, part headers and the small `purpose` field


class UploadLimit:
    def __init__(self, app, limit: int, path: str):
        self.app, self.limit, self.path = app, limit, path

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == self.path:
            length = dict(scope["headers"]).get(b"content-length")
            if length and length.isdigit() and int(length) > self.limit + MULTIPART_OVERHEAD:
                message = f"The upload is larger than this server's upload limit of {self.limit} bytes"
                body = json.dumps(error_body(message, "invalid_request_error", "file", "file_too_large")).encode()
                await send({"type": "http.response.start", "status": 413, "headers": [
                    (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
