"""What the kling-chain client raises: one base, ``ClientError``, and the mapping from the
API's error replies (``{"error", "details": [{"field", "message"}]}``) to its subclasses.

- ``ApiError`` and its subclasses: the service answered with an error status;
- ``TransportError``: the service could not be reached, or its reply was lost;
- ``UnexpectedReply``: the service answered with something that is not the API's JSON;
- ``WaitTimeout``: a chain did not end within the time given to ``wait``.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from chainctl.replies import Chain


class ClientError(Exception):
    """A request to the kling-chain service did not succeed."""


class TransportError(ClientError):
    """The service could not be reached, or its reply was lost on the way."""

    def __init__(self, base_url: str, cause: Exception) -> None:
        self.base_url = base_url
        self.reason = type(cause).__name__
        self.reply_lost = isinstance(
            cause, httpx.TimeoutException | httpx.NetworkError | httpx.RemoteProtocolError
        )
        """True for a timeout or a dropped connection: the request may have arrived."""
        super().__init__(f"cannot reach the service at {base_url} ({self.reason})")


class UnexpectedReply(ClientError):
    """The service answered with something that is not the API's JSON."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a request: the field (None for the request as a whole) and why."""

    field: str | None
    message: str


class ApiError(ClientError):
    """The service refused the request; ``status``, ``message`` and ``details`` say why."""

    def __init__(
        self,
        status: int,
        message: str,
        details: Sequence[Problem] = (),
        body: Mapping[str, Any] | None = None,
    ) -> None:
        self.status = status
        self.message = message
        self.details: builtins.list[Problem] = builtins.list(details)
        self.body: Mapping[str, Any] = body or {}
        """The whole error reply, for fields beyond ``error`` and ``details``."""
        super().__init__(status, message)

    def __str__(self) -> str:
        lines = "".join(f"\n  {d.field or 'request'}: {d.message}" for d in self.details)
        return f"{self.message} (HTTP {self.status}){lines}"


class BadRequest(ApiError):
    """400: the request could not be read (a body that is not JSON, for one)."""


class Unauthorized(ApiError):
    """401: the API token is missing or wrong."""


class Forbidden(ApiError):
    """403: the request is not allowed."""


class NotFound(ApiError):
    """404: no such chain (or route)."""


class Conflict(ApiError):
    """409: the chain's status does not allow it (``chain_status`` says which it is)."""

    @property
    def chain_status(self) -> str | None:
        value = self.body.get("chain_status")
        return value if isinstance(value, str) else None


class TooLarge(ApiError):
    """413: the request body is too large."""


class UnsupportedMediaType(ApiError):
    """415: the body was not sent as JSON."""


class ValidationFailed(ApiError):
    """422: the request is invalid; ``details`` names each field and its rule."""

    @property
    def fields(self) -> dict[str | None, str]:
        """Each field named in ``details`` and its message (a field named twice: the last)."""
        return {d.field: d.message for d in self.details}


class Unavailable(ApiError):
    """503 (or a proxy's 502/504): the service cannot answer now; try again shortly."""


ERRORS: Mapping[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: TooLarge,
    415: UnsupportedMediaType,
    422: ValidationFailed,
    502: Unavailable,
    503: Unavailable,
    504: Unavailable,
}


class WaitTimeout(ClientError, TimeoutError):
    """The chain did not end within the time given to ``wait``; ``chain`` is its last view."""

    def __init__(self, chain: Chain, timeout: float) -> None:
        self.chain = chain
        super().__init__(f"chain {chain.id} still {chain.status} after {timeout:g} s")


def api_error(status: int, data: Any, text: str = "") -> ApiError:
    """The exception for an error reply: its status and its JSON (``data``, None when the
    body was not JSON, then ``text`` is the message)."""
    body = data if isinstance(data, dict) else {}
    message = body.get("error")
    if not isinstance(message, str) or not message:
        message = text.strip()[:200] or "request failed"
    details = [
        Problem(
            field=d.get("field") if isinstance(d.get("field"), str) else None,
            message=str(d.get("message", "")),
        )
        for d in body.get("details") or ()
        if isinstance(d, dict)
    ]
    return ERRORS.get(status, ApiError)(status, message, details, body)


def read_reply(status: int, content: bytes) -> Any:
    """A reply's JSON; raises the ``ApiError`` for an error status."""
    try:
        data = json.loads(content) if content else None
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested past the stack
        data = None
        if status < 400:
            raise UnexpectedReply(f"HTTP {status} with a body that is not JSON") from None
    if status >= 400:
        raise api_error(status, data, content.decode("utf-8", "replace"))
    return data


def worth_asking_again(exc: ClientError) -> bool:
    """Whether a create that failed so may be sent again with the same Idempotency-Key:
    its reply was lost, or the first attempt is still being stored (409)."""
    if isinstance(exc, TransportError):
        return exc.reply_lost
    return isinstance(exc, ApiError) and exc.status in (409, 502, 504)
