"""One place that turns errors into OpenAI's shape {"error": {message, type, param, code}}.

Routes never build error bodies: services raise core.errors, FastAPI raises validation
and HTTP errors, and these handlers render all of them the same way.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.errors import TuneforgeError

log = logging.getLogger(__name__)
_WHERE = ("body", "query", "path", "header", "cookie")


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


_MEANINGS = {
    400: "A value that cannot be used (the message names it), or a NUL in the URL",
    401: "No API key, or one that is unknown or revoked",
    403: "A download link that was altered or has expired",
    404: "No such object for this team",
    409: "The object's state does not allow it (e.g. cancelling a finished job)",
    413: "A body, upload, row or file over one of this server's limits (the message names it)",
    422: "A field that fails validation (`param` names it)",
    429: "Over the team's quota",
}


def responses(*codes: int) -> dict[int | str, dict]:
    """OpenAPI `responses` for the error statuses a route really returns, each with the
    error schema (FastAPI's default 422 schema is replaced: ours is rendered instead)."""
    from api.schemas import ErrorResponse

    return {code: {"model": ErrorResponse, "description": _MEANINGS[code]} for code in codes}


# What the request guard and validation can answer on any /v1 route.
COMMON = (400, 401, 422)


def param_of(loc: tuple | list) -> str | None:
    """('body', 'hyperparameters', 'learning_rate') -> 'hyperparameters.learning_rate'.

    Union branch tags pydantic puts in locations (e.g. "literal['auto']", "float") are
    dropped: they name a type the client did not write, not a field.
    """
    parts = list(loc)
    if parts and parts[0] in _WHERE:
        parts = parts[1:]
    named = [str(p) for p in parts if isinstance(p, int) or (isinstance(p, str) and p.replace("-", "_").isidentifier())]
    typeish = {"float", "int", "str", "bool", "list", "dict", "constrained-float", "constrained-int"}
    while named and named[-1] in typeish:
        named.pop()
    return ".".join(named) or None


def install(app: FastAPI) -> None:
    @app.exception_handler(TuneforgeError)
    async def _domain(_request: Request, exc: TuneforgeError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        param = param_of(first.get("loc", ()))
        message = f"{param}: {first['msg']}" if param else str(first["msg"])
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
        return JSONResponse(error_body(message, "invalid_request_error", param, "invalid_value"), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(exc.status_code)
        return JSONResponse(
            error_body(str(exc.detail), "invalid_request_error", getattr(exc, "param", None), code),
            status_code=exc.status_code,
            headers=exc.headers,
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body("The server had an error while processing your request.", "server_error"), status_code=500)
