"""Per-step callback tokens: an HMAC of the step's identity under ``CALLBACK_SECRET``.

The provider signs nothing, so the callback URL itself is the credential: only someone who
was given the URL can produce a token that verifies, and each token is good for one step only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac


def sign(secret: bytes, chain_id: str, index: int) -> str:
    digest = hmac.new(secret, f"step:{chain_id}:{index}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:24]).decode().rstrip("=")


def verify(secret: bytes, chain_id: str, index: int, token: str) -> bool:
    """Constant-time check of a token taken from a callback URL."""
    return hmac.compare_digest(sign(secret, chain_id, index).encode(), token.encode())


def callback_url(public_base: str, secret: bytes, chain_id: str, index: int) -> str:
    return f"{public_base}/callbacks/{chain_id}/{index}/{sign(secret, chain_id, index)}"
