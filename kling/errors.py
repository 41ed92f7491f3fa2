"""Errors raised by the Kling client, and the mapping from provider replies to them.

The provider answers with an HTTP status and a numeric ``code`` in the JSON envelope.
The code decides; the HTTP status is only consulted when no code came back (a gateway's
own error page, a proxy timeout...). Callers decide "retry or give up" from the type:

- ``RetryableError`` and ``MalformedReply``: try again later, with backoff;
- ``PermanentError`` and its subclasses: give up and surface the message;
- ``AmbiguousCreate``: a create request may have created (and billed) a task; look it up
  (for example by ``external_task_id``) before submitting again.
"""

from __future__ import annotations

__all__ = [
    "PERMANENT_CODES",
    "RETRYABLE_CODES",
    "AccountError",
    "AmbiguousCreate",
    "AuthError",
    "InvalidRequest",
    "KlingError",
    "MalformedReply",
    "NotFound",
    "PermanentError",
    "RetryableError",
    "provider_error",
]

AUTH_CODES: frozenset[int] = frozenset(range(1000, 1005))
ACCOUNT_CODES: frozenset[int] = frozenset(range(1100, 1104))
NOT_FOUND_CODES: frozenset[int] = frozenset({1202, 1203})

RETRYABLE_CODES: frozenset[int] = frozenset({1302, 1303, 5000, 5001, 5002})
"""Codes worth retrying after a pause: rate limit, concurrency limit, server trouble."""

PERMANENT_CODES: frozenset[int] = (
    AUTH_CODES | ACCOUNT_CODES | frozenset({1200, 1201, 1202, 1203, 1300, 1301, 1304})
)
"""The documented codes that retrying cannot fix. Unknown non-zero codes are treated alike."""


class KlingError(Exception):
    """The Kling API request failed."""

    code: int | None
    http_status: int | None
    message: str
    request_id: str | None

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        http_status: int | None = None,
        request_id: str | None = None,
    ) -> None:
        self.message = message.strip() or default_message(type(self))
        self.code = code
        self.http_status = http_status
        self.request_id = request_id
        super().__init__(self.message)

    def __str__(self) -> str:
        details = []
        if self.code is not None:
            details.append(f"code {self.code}")
        if self.http_status is not None:
            details.append(f"HTTP {self.http_status}")
        if self.request_id:
            details.append(f"request_id {self.request_id}")
        return f"{self.message} ({', '.join(details)})" if details else self.message

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, code={self.code!r}, "
            f"http_status={self.http_status!r}, request_id={self.request_id!r})"
        )


class InvalidRequest(KlingError, ValueError):
    """The request failed our own validation and was not sent."""


class MalformedReply(KlingError):
    """The provider's reply could not be understood; it may be a passing fault, try again."""


class RetryableError(KlingError):
    """The provider is busy, rate-limiting or unreachable; try again after a pause."""


class PermanentError(KlingError):
    """The provider refused the request; retrying the same request will not help."""


class AuthError(PermanentError):
    """The provider rejected our credentials (missing, invalid, not yet valid or expired)."""


class AccountError(PermanentError):
    """The account cannot run this request (account exception, arrears, resource pack used
    up or expired, or no permission for this API or model); retrying will not help."""


class NotFound(PermanentError):
    """The task, video, model or method was not found."""


class AmbiguousCreate(KlingError):
    """The create request may have reached the provider but no reply came back: the task may
    exist and be billed. Look it up before submitting it again."""


def default_message(cls: type[KlingError]) -> str:
    """The first paragraph of the class docstring, on one line: the error's meaning."""
    doc = cls.__doc__ or cls.__name__
    return " ".join(doc.strip().split("\n\n")[0].split())


def provider_error(
    code: int | None,
    http_status: int | None,
    message: str,
    request_id: str | None = None,
) -> KlingError:
    """Map a failed reply to the exception to raise.

    ``code`` decides when present and non-zero; ``http_status`` only when it is missing.
    An empty ``message`` is replaced by the class's meaning.
    """
    cls = _class_for(code, http_status)
    return cls(message, code=code, http_status=http_status, request_id=request_id)


def _class_for(code: int | None, http_status: int | None) -> type[KlingError]:
    if code:
        if code in AUTH_CODES:
            return AuthError
        if code in ACCOUNT_CODES:
            return AccountError
        if code in NOT_FOUND_CODES:
            return NotFound
        if code in RETRYABLE_CODES:
            return RetryableError
        return PermanentError
    if http_status is None or 200 <= http_status < 300:
        # A failure was reported without a code and without an error status: we could
        # not make sense of the reply.
        return MalformedReply
    if http_status >= 500 or http_status in (408, 429):
        return RetryableError
    if http_status == 401:
        return AuthError
    if http_status == 404:
        return NotFound
    return PermanentError
