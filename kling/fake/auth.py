"""Checking a request's ``Authorization`` header: a static API key, or an AK/SK JWT.

Gateways take ``Bearer <api key>``; the official API takes ``Bearer <JWT>`` signed HS256
with the secret key, ``iss`` = access key, with ``exp`` and ``nbf``. A request passes when
it satisfies either configured mode; with neither configured, no auth is required.
"""

from __future__ import annotations

import hmac
import warnings
from dataclasses import dataclass, field

import jwt

from kling.fake.errors import (
    AUTH_EXPIRED,
    AUTH_INVALID,
    AUTH_MISSING,
    AUTH_NOT_YET_VALID,
    unauthorized,
)


@dataclass(frozen=True)
class Credentials:
    """The keys the fake accepts. Secrets are kept out of ``repr``."""

    api_key: str | None = field(default=None, repr=False)
    access_key: str | None = None
    secret_key: str | None = field(default=None, repr=False)

    @property
    def jwt_enabled(self) -> bool:
        return bool(self.access_key and self.secret_key)

    @property
    def required(self) -> bool:
        return bool(self.api_key) or self.jwt_enabled


def authorize(header: str | None, credentials: Credentials, *, now: float) -> None:
    """Raise ``KlingError`` (401, 1001-1004) unless ``header`` carries valid credentials.

    ``now`` is wall-clock seconds (not the fake clock: clients mint tokens with real time).
    """
    if not credentials.required:
        return
    if header is None or not header.strip():
        raise unauthorized(AUTH_MISSING, "Authorization header is missing")
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise unauthorized(AUTH_INVALID, "Authorization must be 'Bearer <token>'")
    if credentials.api_key and hmac.compare_digest(token.encode(), credentials.api_key.encode()):
        return
    if credentials.jwt_enabled and token.count(".") == 2:
        _check_jwt(token, credentials, now)
        return
    raise unauthorized(AUTH_INVALID, "invalid API key")


def _check_jwt(token: str, credentials: Credentials, now: float) -> None:
    try:
        with warnings.catch_warnings():
            # A short secret is the operator's choice; do not warn on every request.
            warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
            claims = jwt.decode(
                token,
                credentials.secret_key or "",
                algorithms=["HS256"],
                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False},
            )
    except jwt.InvalidTokenError as exc:
        raise unauthorized(AUTH_INVALID, f"invalid token: {exc}") from None
    if claims.get("iss") != credentials.access_key:
        raise unauthorized(AUTH_INVALID, "invalid token: unknown access key (iss)")
    expires = _number(claims.get("exp"))
    not_before = _number(claims.get("nbf"))
    if expires is None or (not_before is None and claims.get("nbf") is not None):
        raise unauthorized(AUTH_INVALID, "invalid token: exp must be a number, nbf too if given")
    if not_before is not None and now < not_before:
        raise unauthorized(AUTH_NOT_YET_VALID, "token is not valid yet (nbf)")
    if now >= expires:
        raise unauthorized(AUTH_EXPIRED, "token has expired (exp)")


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None
