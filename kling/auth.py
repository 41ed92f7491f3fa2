"""The two ways to authenticate to Kling: a static gateway key, or an AK/SK-signed JWT."""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import jwt
import jwt.warnings

from kling.errors import InvalidRequest

__all__ = ["Auth", "BearerKey", "JwtAuth", "auth_from"]

MIN_HS256_KEY_BYTES = 32
REMINT_MARGIN_SECONDS = 300
_KEY_LENGTH_WARNING: type[Warning] = getattr(jwt.warnings, "InsecureKeyLengthWarning", UserWarning)


@runtime_checkable
class Auth(Protocol):
    """Supplies the ``Authorization`` header for each request."""

    def header(self) -> str:
        """The full header value, ``"Bearer ..."``."""
        ...

    def refresh(self) -> None:
        """Forget any cached token; called once after the provider rejects our credentials."""
        ...


class BearerKey:
    """A static API key, as gateways and relays issue (``sk-...``)."""

    def __init__(self, api_key: str) -> None:
        key = _required("api_key", api_key)
        if key.lower().startswith("bearer "):
            key = key[len("bearer ") :].strip()
        self._key = key

    def header(self) -> str:
        return f"Bearer {self._key}"

    def refresh(self) -> None:
        """Nothing is cached: a static key stays what it is."""

    def __repr__(self) -> str:
        return "BearerKey(api_key=<hidden>)"


class JwtAuth:
    """Official API credentials: a JWT signed HS256 with the secret key, ``iss`` the access key.

    A token lives ``ttl`` seconds and is reused until less than five minutes (or a sixth of
    ``ttl``, whichever is shorter) remain, then minted again. Safe to share between threads.
    """

    def __init__(
        self,
        access_key: str,
        secret_key: str,
        *,
        ttl: int = 1800,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._access_key = _required("access_key", access_key)
        self._secret_key = _required("secret_key", secret_key)
        if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 30:
            raise InvalidRequest(f"ttl must be a whole number of seconds >= 30, got {ttl!r}")
        self._ttl = ttl
        self._margin = min(REMINT_MARGIN_SECONDS, ttl / 6)
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires_at = 0.0

    def header(self) -> str:
        with self._lock:
            now = self._clock()
            if self._token is None or self._expires_at - now < self._margin:
                self._token, self._expires_at = self._mint(now)
            return f"Bearer {self._token}"

    def refresh(self) -> None:
        with self._lock:
            self._token = None

    def _mint(self, now: float) -> tuple[str, float]:
        issued = int(now)
        expires_at = issued + self._ttl
        claims = {"iss": self._access_key, "exp": expires_at, "nbf": issued - 5}
        headers = {"alg": "HS256", "typ": "JWT"}
        if len(self._secret_key.encode()) >= MIN_HS256_KEY_BYTES:
            token = jwt.encode(claims, self._secret_key, algorithm="HS256", headers=headers)
        else:
            # The provider issues the secret key; warning about its length on every mint
            # helps no one (and breaks test suites that turn warnings into errors).
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", _KEY_LENGTH_WARNING)
                token = jwt.encode(claims, self._secret_key, algorithm="HS256", headers=headers)
        return token, float(expires_at)

    def __repr__(self) -> str:
        shown = self._access_key[:4] + "..."
        return f"JwtAuth(access_key={shown!r}, secret_key=<hidden>, ttl={self._ttl})"


def auth_from(*, api_key: str | None, access_key: str | None, secret_key: str | None) -> Auth:
    """Choose the auth mode from settings; empty strings count as unset.

    Raises ``InvalidRequest`` (a ``ValueError``) when the settings are missing, partial or
    mixed.
    """
    api_key = _blank_to_none(api_key)
    access_key = _blank_to_none(access_key)
    secret_key = _blank_to_none(secret_key)
    if api_key is not None:
        if access_key is not None or secret_key is not None:
            raise InvalidRequest(
                "set either KLING_API_KEY, or KLING_ACCESS_KEY and KLING_SECRET_KEY, not both"
            )
        return BearerKey(api_key)
    if access_key is not None and secret_key is not None:
        return JwtAuth(access_key, secret_key)
    if access_key is not None:
        raise InvalidRequest("KLING_ACCESS_KEY is set but KLING_SECRET_KEY is missing")
    if secret_key is not None:
        raise InvalidRequest("KLING_SECRET_KEY is set but KLING_ACCESS_KEY is missing")
    raise InvalidRequest(
        "no Kling credentials: set KLING_API_KEY, or both KLING_ACCESS_KEY and KLING_SECRET_KEY"
    )


def _required(name: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f"{name} must be a non-empty string")
    return value.strip()


def _blank_to_none(value: str | None) -> str | None:
    return value.strip() if value is not None and value.strip() else None
