"""Per-step callback tokens: an HMAC of the step's identity under ``CALLBACK_SECRET``.

The provider signs nothing, so the callback URL itself is the credential: only someone who
was given the URL can produce a token that verifies, and each token is good for one step only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac


def _mac(secret: bytes, message: str) -> str:
    digest = hmac.new(secret, message.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:24]).decode().rstrip("=")


def _same(expected: str, token: str) -> bool:
    return hmac.compare_digest(expected.encode(), token.encode(errors="replace"))


def sign(secret: bytes, chain_id: str, index: int) -> str:
    return _mac(secret, f"step:{chain_id}:{index}")


def verify(secret: bytes, chain_id: str, index: int, token: str) -> bool:
    """Constant-time check of a token taken from a callback URL."""
    return _same(sign(secret, chain_id, index), token)


def callback_url(public_base: str, secret: bytes, chain_id: str, index: int) -> str:
    return f"{public_base}/callbacks/{chain_id}/{index}/{sign(secret, chain_id, index)}"


def sign_archive(secret: bytes, kind: str) -> str:
    """The token of the account-wide archive callback URL for one task kind."""
    return _mac(secret, f"archive:{kind}")


def verify_archive(secret: bytes, kind: str, token: str) -> bool:
    return _same(sign_archive(secret, kind), token)


def archive_callback_url(public_base: str, secret: bytes, kind: str) -> str:
    return f"{public_base}/callbacks/archive/{kind}/{sign_archive(secret, kind)}"


# -- links to archived files ----------------------------------------------------------------
# A ``<video>`` element cannot send the API's bearer header, so the API hands out a link that
# carries its own short-lived signature instead (``/files/{video_id}?expires=..&sig=..``).


def _file_key(secret: bytes) -> bytes:
    """A key of its own for file links, derived from ``CALLBACK_SECRET``."""
    return hmac.new(secret, b"kling-chain file links", hashlib.sha256).digest()


def sign_file(secret: bytes, video_id: str, expires: int) -> str:
    """The signature of a link to ``video_id``'s archived file, good until ``expires``."""
    digest = hmac.new(_file_key(secret), f"file:{video_id}:{expires}".encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(digest.digest()).decode().rstrip("=")


def verify_file(secret: bytes, video_id: str, expires: int, sig: str, now: float) -> bool:
    """Constant-time check of a file link's signature; False once it has expired."""
    return _same(sign_file(secret, video_id, expires), sig) and now < expires
