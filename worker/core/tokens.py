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
