"""Outbound notifications: events POSTed to ``NOTIFY_URL``, signed per Standard Webhooks.

When a chain's step succeeds, a chain ends, a video is archived, or a video is about to be
lost (or is lost), the service sends an `Event` to the operator's endpoint, and an event
about a chain to the chain's own ``webhook_url`` too (which goes where:
``worker.core.webhooks.destinations``). The request carries the three headers of the
Standard Webhooks specification (https://www.standardwebhooks.com):

- ``webhook-id``: the event's id. It stays the same on every retry, so receivers can use it
  as an idempotency key; callers pass a deterministic id (`event_id`) so that a redelivered
  task sends the same id again. The same event sent to two destinations carries the same
  id at both: it identifies the message, not the delivery.
- ``webhook-timestamp``: the time of *this attempt*, in unix seconds. A retry is signed anew,
  because receivers reject timestamps more than five minutes from their clock.
- ``webhook-signature``: ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` computed by
  the ``standardwebhooks`` package under the ``whsec_`` secret.

Any receiver verifies a delivery with its own Standard Webhooks library, or with `verify`.

The decisions (payload bytes, headers, what a reply means) are pure functions; `deliver`
does one POST and raises `DeliveryFailed` (try again later, after the receiver's
``Retry-After`` if it sent one) or `DeliveryRejected` (give up). How long the Celery task
waits, and how often it tries, is ``worker.core.retry``'s ``Kind.NOTIFY``.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import hashlib
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from math import floor
from typing import Any

import requests
from standardwebhooks import Webhook, WebhookVerificationError

from worker.core.webhooks import EventType
from worker.outbound.netguard import AllowList, DestinationRefused, guarded_session
from worker.outbound.urls import display, http_problem

__all__ = [
    "DeliveryError",
    "DeliveryFailed",
    "DeliveryRejected",
    "Event",
    "EventType",
    "WebhookVerificationError",
    "check_url",
    "deliver",
    "delivery_error",
    "event_id",
    "new_event",
    "parse_retry_after",
    "parse_secret",
    "sign_headers",
    "verify",
]

SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's marker, not a secret
MIN_SECRET_BYTES = 24
MAX_SECRET_BYTES = 64
"""The specification's bounds for a symmetric signing key: 192 to 512 bits."""

USER_AGENT = "kling-chain-notify/1"

_ID = re.compile(r"[A-Za-z0-9_-]{1,200}")
"""What an event id may hold. No ".": the signed content is ``{id}.{timestamp}.{body}``."""


class DeliveryError(Exception):
    """The notification was not delivered."""


class DeliveryFailed(DeliveryError):
    """The receiver could not take the notification now (5xx, 408, 429, 3xx, network, timeout).

    Try again later, no sooner than `retry_after` seconds when the receiver said so.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DeliveryRejected(DeliveryError):
    """The receiver refused the notification (a 4xx other than 408 and 429): do not retry."""


@dataclass(frozen=True)
class Event:
    """One notification. ``data`` is held as plain JSON values, ``timestamp`` in UTC.

    Build one with `new_event`; `to_dict` and `from_dict` carry it through a JSON queue.
    """

    id: str
    type: EventType
    timestamp: datetime
    data: Mapping[str, Any]

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not _ID.fullmatch(self.id):
            raise ValueError(
                f"event id must be 1 to 200 letters, digits, '_' or '-', not {self.id!r}"
            )
        object.__setattr__(self, "type", EventType(self.type))
        object.__setattr__(self, "timestamp", _utc(self.timestamp))
        try:
            plain = json.loads(_dumps(dict(self.data)))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"event data must be a JSON object: {exc}") from exc
        object.__setattr__(self, "data", plain)

    def payload(self) -> str:
        """The request body: compact JSON, keys in a fixed order, ASCII only.

        ``{"type":...,"timestamp":...,"data":{...}}`` with ``data``'s keys sorted at every
        level, so the same event always gives the same bytes (and the same signature).
        """
        return (
            f'{{"type":{_dumps(self.type.value)},'
            f'"timestamp":{_dumps(_iso(self.timestamp))},'
            f'"data":{_dumps(self.data)}}}'
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values, for a Celery task argument; `from_dict` gives the event back."""
        return {
            "id": self.id,
            "type": self.type.value,
            "timestamp": _iso(self.timestamp),
            "data": dict(self.data),
        }

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> Event:
        try:
            return cls(
                id=value["id"],
                type=EventType(value["type"]),
                timestamp=datetime.fromisoformat(value["timestamp"]),
                data=value["data"],
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not an event: {exc!r}") from exc


def new_event(
    type: EventType,
    data: Mapping[str, Any],
    *,
    now: datetime | None = None,
    event_id: str | None = None,
) -> Event:
    """An event that happened `now` (default: the current time).

    The id is random (``evt_`` and 24 hex digits) unless given. Pass a deterministic one,
    made with `event_id`, when the code that sends the event may run more than once.
    """
    return Event(
        id=event_id if event_id is not None else f"evt_{secrets.token_hex(12)}",
        type=type,
        timestamp=datetime.now(UTC) if now is None else now,
        data=data,
    )


def event_id(*parts: str | int) -> str:
    """A deterministic event id: ``evt_`` and the parts joined by ``_``.

    ``event_id(chain_id, "end")`` gives ``evt_<chain_id>_end``. When a part holds a character
    an id may not (video ids may hold "."), or the result is too long, the id is a digest of
    the parts instead: just as stable, and no two different part lists share it.
    """
    if not parts:
        raise ValueError("an event id needs at least one part")
    text = "_".join(str(p) for p in parts)
    candidate = f"evt_{text}"
    if _ID.fullmatch(candidate):
        return candidate
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()
    return f"evt_{digest[:40]}"


def parse_secret(secret: str) -> bytes:
    """The signing key in a ``whsec_<base64>`` secret; ValueError when it is not one.

    Stricter than the ``standardwebhooks`` package, which skips characters that are not
    base64 (so a mistyped secret would sign with another key): standard base64 only, and
    24 to 64 bytes once decoded. The messages never contain the secret.
    """
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"the secret must look like {SECRET_PREFIX}<base64>")
    encoded = secret[len(SECRET_PREFIX) :]
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(
            f"the part after {SECRET_PREFIX} must be standard base64 (A-Z a-z 0-9 + /)"
        ) from None
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise ValueError(
            f"the secret must decode to {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes, "
            f"not {len(key)}; e.g. {SECRET_PREFIX}$(openssl rand -base64 32)"
        )
    return key


def sign_headers(secret: str, event: Event, *, now: datetime | None = None) -> dict[str, str]:
    """The headers of one delivery attempt made at `now` (default: the current time).

    Call it again for every attempt: the timestamp, and so the signature, must be fresh.
    """
    key = parse_secret(secret)
    seconds = floor((datetime.now(UTC) if now is None else _utc(now)).timestamp())
    at = datetime.fromtimestamp(seconds, UTC)
    signature: str = Webhook(key).sign(msg_id=event.id, timestamp=at, data=event.payload())
    return {
        "webhook-id": event.id,
        "webhook-timestamp": str(seconds),
        "webhook-signature": signature,
        "content-type": "application/json",
    }


def verify(secret: str, payload: str | bytes, headers: Mapping[str, str]) -> Any:
    """Check a delivery the way a receiver does; return the parsed body.

    Raises ``WebhookVerificationError`` for a missing or malformed header, a timestamp more
    than five minutes from now, or no matching signature.
    """
    hook = Webhook(secret)
    try:
        hook.verify(payload, dict(headers), json_parse=False)
    except ValueError as exc:  # an unparsable signature header, a body that is not UTF-8
        raise WebhookVerificationError(f"malformed webhook: {exc}") from exc
    return json.loads(payload)


def check_url(url: str) -> str:
    """Return `url` if it is an http(s) URL with a host; raise ValueError otherwise."""
    problem = http_problem(url)
    if problem is not None:
        raise ValueError(
            f"the notification URL must be an http or https URL with a host: {problem}"
        )
    return url


def delivery_error(status: int, retry_after: str | None = None) -> DeliveryError | None:
    """What a reply's status means: None for success (2xx), else the error to raise.

    2xx is delivered. 408 and 429 are "not now", as is any 5xx. Other 4xx are a refusal that
    repeating cannot fix. 3xx (redirects are not followed: point the URL at the final
    address) and anything else count as a failure worth retrying.
    """
    if 200 <= status < 300:
        return None
    wait = parse_retry_after(retry_after)
    if 400 <= status < 500 and status not in (408, 429):
        return DeliveryRejected(f"the receiver refused the notification with HTTP {status}")
    if 300 <= status < 400:
        return DeliveryFailed(
            f"the receiver answered HTTP {status} (a redirect, which is not followed)"
        )
    return DeliveryFailed(f"the receiver answered HTTP {status}", retry_after=wait)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date); None if absent."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def deliver(
    url: str,
    secret: str,
    event: Event,
    *,
    session: requests.Session | None = None,
    timeout: float = 10.0,
    allow: AllowList | None = None,
) -> int:
    """POST `event` to `url`, signed now. Return the (2xx) status.

    `NOTIFY_URL` is the operator's own, so by default any address may be reached. For a URL
    that someone else supplied, pass `allow` (e.g. the ``ALLOW_PRIVATE_HOSTS`` list, or an
    empty `AllowList`): the POST then goes through `worker.outbound.netguard`, and an internal
    address it does not name is a `DeliveryRejected`. (Or pass a `session` made by
    `worker.outbound.netguard.guarded_session`.)

    Raises `DeliveryFailed` to retry later, `DeliveryRejected` to give up, and ValueError for
    a URL or secret that can never work.
    """
    check_url(url)
    if session is not None and allow is not None:
        raise ValueError("pass allow to guarded_session(), not with a session of your own")
    headers = {**sign_headers(secret, event), "user-agent": USER_AGENT}
    body = event.payload().encode("ascii")
    if session is not None:
        http = session
    elif allow is not None:
        http = guarded_session(allow)
    else:
        http = requests.Session()
    try:
        # stream=True: the status is all we need; the body is never read.
        with http.post(
            url,
            data=body,
            headers=headers,
            timeout=timeout,
            allow_redirects=False,
            stream=True,
        ) as reply:
            error = delivery_error(reply.status_code, reply.headers.get("retry-after"))
            if error is not None:
                raise error
            return reply.status_code
    except DestinationRefused as exc:
        raise DeliveryRejected(f"{display(url)}: {exc}") from None
    except requests.exceptions.InvalidURL:
        raise
    except requests.Timeout as exc:
        raise DeliveryFailed(f"{display(url)} did not answer within {timeout} s") from exc
    except requests.RequestException as exc:
        raise DeliveryFailed(f"could not reach {display(url)}: {type(exc).__name__}") from exc
    finally:
        if session is None:
            http.close()


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"a timestamp needs a time zone, got naive {moment.isoformat()}")
    return moment.astimezone(UTC)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, allow_nan=False)
