"""Errors the fake Kling gateway answers with, using the provider's HTTP statuses and codes."""

from __future__ import annotations

# Codes from the provider's error table (see the project's KLING_API.md).
AUTH_FAILED = 1000
AUTH_MISSING = 1001
AUTH_INVALID = 1002
AUTH_NOT_YET_VALID = 1003
AUTH_EXPIRED = 1004
ACCOUNT_EXCEPTION = 1100
ACCOUNT_ARREARS = 1101
RESOURCE_PACK_EXHAUSTED = 1102
NO_PERMISSION = 1103
INVALID_REQUEST = 1200
INVALID_PARAMETER = 1201
INVALID_METHOD = 1202
NOT_FOUND = 1203
SERVER_ERROR = 5000


class KlingError(Exception):
    """A request the fake gateway refuses, with the reply the provider would send."""

    def __init__(self, http_status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"KlingError({self.http_status}, {self.code}, {self.message!r})"


def bad_parameter(message: str) -> KlingError:
    """400/1201: a request parameter is missing, malformed or not allowed."""
    return KlingError(400, INVALID_PARAMETER, message)


def not_found(message: str) -> KlingError:
    """404/1203: the task or video does not exist."""
    return KlingError(404, NOT_FOUND, message)


def unauthorized(code: int, message: str) -> KlingError:
    """401/100x: the request's credentials were refused."""
    return KlingError(401, code, message)


class ConnectionCut(Exception):
    """The connection was cut on purpose by a fault knob (not a bug in the gateway)."""
