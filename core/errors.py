"""Domain errors carry their HTTP status and OpenAI error fields; one API handler renders them.

Services raise these; routes never build error responses themselves.
"""

from __future__ import annotations


class TuneforgeError(Exception):
    status_code = 400
    type = "invalid_request_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def to_dict(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class InvalidRequest(TuneforgeError):
    status_code = 400


class NotFound(TuneforgeError):
    status_code = 404
    code = "not_found"


class IllegalTransition(TuneforgeError):
    status_code = 409
    code = "invalid_state"


class Conflict(TuneforgeError):
    status_code = 409
    code = "conflict"


class TooLarge(TuneforgeError):
    status_code = 413
    code = "file_too_large"


class QuotaExceeded(TuneforgeError):
    status_code = 429
    type = "rate_limit_error"
    code = "quota_exceeded"


class Unauthorized(TuneforgeError):
    status_code = 401
    type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(TuneforgeError):
    """A signed download token that was tampered with or has expired."""

    status_code = 403
    code = "invalid_signature"


class StaleAttempt(TuneforgeError):
    """A write from a runner whose attempt (fencing token) is no longer the job's current one."""

    status_code = 409
    code = "stale_attempt"
