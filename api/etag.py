"""Conditional GETs for pollers: an `ETag` on the read endpoints, `304 Not Modified` when the
client's `If-None-Match` still matches.

Why: a dashboard polls every few seconds and almost every answer is the one it already has.
The tag is a hash of what the body is made from (the row's version, the newest event id or
metric step, the query) -- never of the rendered body -- so a 304 costs a primary-key lookup
and no rendering. Bodies are private to the caller's team: `Cache-Control: private,
no-cache` lets a browser keep them but makes it revalidate every time.
"""

from __future__ import annotations

import hashlib

from fastapi import Request, Response

#: Bump when the rendering of a body changes, so clients do not keep an old shape.
BODY_FORMAT = "1"
CACHE_CONTROL = "private, no-cache"


def make_etag(*parts: object) -> str:
    digest = hashlib.blake2b(repr((BODY_FORMAT, *parts)).encode(), digest_size=12).hexdigest()
    return f'"{digest}"'


def _matches(if_none_match: str, tag: str) -> bool:
    """RFC 9110 weak comparison: `*`, or any listed tag equal to ours with W/ ignored."""
    if if_none_match.strip() == "*":
        return True
    return any(t.strip().removeprefix("W/") == tag for t in if_none_match.split(","))


def conditional(request: Request, response: Response, *parts: object) -> Response | None:
    """Tag the response; return a 304 to send instead of the body when the client has it."""
    tag = make_etag(request.url.path, *parts)
    inm = request.headers.get("if-none-match")
    if inm is not None and _matches(inm, tag):
        return Response(status_code=304, headers={"ETag": tag, "Cache-Control": CACHE_CONTROL})
    response.headers["ETag"] = tag
    response.headers["Cache-Control"] = CACHE_CONTROL
    return None
