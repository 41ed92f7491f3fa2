"""Kling's signed callbacks: Standard Webhooks signatures, checked and made.

Once its operator creates a secret (``whsec_<base64>``) in the console, the official API
signs every callback per Standard Webhooks (https://www.standardwebhooks.com):

- ``webhook-id``: the message's id, the same on every redelivery of that message;
- ``webhook-timestamp``: when this delivery was signed, in unix seconds;
- ``webhook-signature``: ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``. While a
  secret is being rotated the header carries several signatures separated by spaces, and
  any one that matches is valid.

`verify` leaves the verdict to the ``standardwebhooks`` package: it compares the signatures
in constant time and refuses a timestamp more than `TOLERANCE_SECONDS` from the clock, in
either direction. What is done here around it: the header is tidied so that one odd entry
cannot hide a good one, and a refusal is named (`SignatureError.reason`) for logs and
metrics. `sign_headers` makes the headers, for the fake gateway. Gateways do not sign.
"""

from __future__ import annotations

import base64
import binascii
import math
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum

from standardwebhooks import Webhook, WebhookVerificationError

__all__ = [
    "ID_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "TOLERANCE_SECONDS",
    "Refusal",
    "SignatureError",
    "sign_headers",
    "verify",
]

TOLERANCE_SECONDS = 300
"""How far a signed timestamp may be from our clock: the ``standardwebhooks`` package's
fixed tolerance (5 minutes), and what the provider's documentation asks of receivers."""

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
MAX_SIGNATURES = 10
"""Signatures looked at in one header; a rotation carries two or three."""


class Refusal(StrEnum):
    """Why a callback's signature was refused."""

    MISSING = "missing"  # a webhook-* header is absent or empty
    MALFORMED = "malformed"  # the timestamp is not a number, no v1 signature can be read
    STALE = "stale"  # signed more than TOLERANCE_SECONDS ago
    FUTURE = "future"  # signed more than TOLERANCE_SECONDS ahead of our clock
    MISMATCH = "mismatch"  # no signature matches the secret


class SignatureError(Exception):
    """The callback does not carry a valid, recent signature made with the secret."""

    def __init__(self, reason: Refusal, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def verify(
    secret: str, body: bytes, headers: Mapping[str, str], *, now: float | None = None
) -> str:
    """Check a signed callback and return its ``webhook-id``; raise `SignatureError`.

    ``headers`` must look names up without regard to case (Starlette's ``Headers`` does),
    or hold them in lower case. ``now`` only names the reason of a refusal; the timestamp
    itself is judged by ``standardwebhooks`` against the system clock.
    """
    msg_id = (headers.get(ID_HEADER) or "").strip()
    stamp = (headers.get(TIMESTAMP_HEADER) or "").strip()
    raw_signatures = headers.get(SIGNATURE_HEADER) or ""
    absent = [
        name
        for name, value in (
            (ID_HEADER, msg_id),
            (TIMESTAMP_HEADER, stamp),
            (SIGNATURE_HEADER, raw_signatures.strip()),
        )
        if not value
    ]
    if absent:
        raise SignatureError(Refusal.MISSING, f"the callback is not signed: no {', '.join(absent)}")
    signatures = _readable(raw_signatures)
    if not signatures:
        raise SignatureError(Refusal.MALFORMED, "webhook-signature holds no v1,<base64> signature")
    try:
        Webhook(secret).verify(
            body,
            {ID_HEADER: msg_id, TIMESTAMP_HEADER: stamp, SIGNATURE_HEADER: " ".join(signatures)},
            json_parse=False,
        )
    except (WebhookVerificationError, ValueError):  # ValueError: a body that is not UTF-8
        raise _refusal(stamp, time.time() if now is None else now) from None
    return msg_id


def sign_headers(
    secret: str, msg_id: str, body: bytes, *, now: float | None = None
) -> dict[str, str]:
    """The three headers of a delivery of ``body`` signed at ``now`` (default: the clock)."""
    seconds = int(time.time() if now is None else now)
    signature: str = Webhook(secret).sign(
        msg_id=msg_id, timestamp=datetime.fromtimestamp(seconds, UTC), data=body.decode()
    )
    return {ID_HEADER: msg_id, TIMESTAMP_HEADER: str(seconds), SIGNATURE_HEADER: signature}


def _readable(header: str) -> list[str]:
    """The header's ``v1,<base64>`` entries, at most `MAX_SIGNATURES`.

    The package gives up at the first entry it cannot split or decode, so an odd entry (no
    comma or two, doubled spaces, base64 that does not decode) would hide a good one after
    it: such entries, and those of other schemes (``v1a,...``), are left out here, and only
    what could match is passed on.
    """
    kept: list[str] = []
    for entry in header.split()[:MAX_SIGNATURES]:
        version, sep, encoded = entry.partition(",")
        if not sep or version != "v1" or not encoded:
            continue
        try:
            base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        kept.append(entry)
    return kept


def _refusal(stamp: str, now: float) -> SignatureError:
    """Name a refusal of the package's: the timestamp's fault, or no signature matched."""
    try:
        signed_at = float(stamp)
    except ValueError:
        signed_at = math.nan
    if not math.isfinite(signed_at):
        return SignatureError(Refusal.MALFORMED, "webhook-timestamp is not unix seconds")
    if signed_at < now - TOLERANCE_SECONDS:
        return SignatureError(
            Refusal.STALE, f"signed {now - signed_at:.0f} s ago (at most {TOLERANCE_SECONDS} s)"
        )
    if signed_at > now + TOLERANCE_SECONDS:
        return SignatureError(
            Refusal.FUTURE,
            f"signed {signed_at - now:.0f} s ahead of our clock (at most {TOLERANCE_SECONDS} s)",
        )
    return SignatureError(Refusal.MISMATCH, "no signature matches KLING_WEBHOOK_SECRET")
