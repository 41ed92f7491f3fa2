"""Static keys, JWT minting and caching, and choosing the mode from settings."""

from __future__ import annotations

import threading
import warnings

import jwt
import jwt.warnings
import pytest

from kling.auth import Auth, BearerKey, JwtAuth, auth_from
from kling.errors import InvalidRequest

ACCESS_KEY = "ak-test-0123456789"
SECRET_KEY = "sk-test-0123456789abcdef0123456789abcdef"  # >= 32 bytes, as HS256 wants


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def token_of(auth: Auth) -> str:
    header = auth.header()
    assert header.startswith("Bearer ")
    return header.removeprefix("Bearer ")


def test_bearer_key_header_and_repr() -> None:
    auth = BearerKey("sk-gateway-secret")

    assert auth.header() == "Bearer sk-gateway-secret"
    auth.refresh()
    assert auth.header() == "Bearer sk-gateway-secret"
    assert "sk-gateway-secret" not in repr(auth)
    assert isinstance(auth, Auth)


def test_bearer_key_accepts_a_pasted_bearer_prefix() -> None:
    assert BearerKey("Bearer sk-1").header() == "Bearer sk-1"


@pytest.mark.parametrize("key", ["", "  "])
def test_bearer_key_must_not_be_empty(key: str) -> None:
    with pytest.raises(InvalidRequest, match="api_key must be a non-empty string"):
        BearerKey(key)


def test_jwt_claims_and_header() -> None:
    auth = JwtAuth(ACCESS_KEY, SECRET_KEY, clock=Clock(1_700_000_000.7))

    token = token_of(auth)

    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT"}
    claims = jwt.decode(
        token,
        SECRET_KEY,
        algorithms=["HS256"],
        options={"verify_exp": False, "verify_nbf": False},
    )
    assert claims == {"iss": ACCESS_KEY, "exp": 1_700_001_800, "nbf": 1_699_999_995}


def test_jwt_verifies_now_with_the_real_clock() -> None:
    token = token_of(JwtAuth(ACCESS_KEY, SECRET_KEY))

    claims = jwt.decode(token, SECRET_KEY, algorithms=["HS256"], issuer=ACCESS_KEY)

    assert claims["exp"] - claims["nbf"] == 1805


def test_jwt_is_cached_until_five_minutes_remain() -> None:
    clock = Clock(1_000_000.0)
    auth = JwtAuth(ACCESS_KEY, SECRET_KEY, clock=clock)
    first = token_of(auth)

    clock.now += 1800 - 301  # 301 s left
    assert token_of(auth) == first

    clock.now += 2  # 299 s left
    second = token_of(auth)
    assert second != first
    assert (
        jwt.decode(second, SECRET_KEY, algorithms=["HS256"], options={"verify_exp": False})["exp"]
        == int(clock.now) + 1800
    )


def test_short_ttl_uses_a_sixth_as_margin() -> None:
    clock = Clock(1_000_000.0)
    auth = JwtAuth(ACCESS_KEY, SECRET_KEY, ttl=60, clock=clock)
    first = token_of(auth)

    clock.now += 49  # 11 s left, margin is 10 s
    assert token_of(auth) == first
    clock.now += 2
    assert token_of(auth) != first


def test_refresh_forces_a_new_token() -> None:
    clock = Clock(1_000_000.0)
    auth = JwtAuth(ACCESS_KEY, SECRET_KEY, clock=clock)
    first = token_of(auth)
    clock.now += 1  # a new token differs only by its timestamps

    auth.refresh()

    assert token_of(auth) != first


def test_short_secret_mints_without_a_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        token = token_of(JwtAuth(ACCESS_KEY, "short"))

    with pytest.warns(jwt.warnings.InsecureKeyLengthWarning):  # decoding still warns
        assert jwt.decode(token, "short", algorithms=["HS256"])["iss"] == ACCESS_KEY


def test_jwt_repr_hides_secrets() -> None:
    text = repr(JwtAuth(ACCESS_KEY, SECRET_KEY))

    assert SECRET_KEY not in text
    assert ACCESS_KEY not in text


def test_jwt_is_thread_safe() -> None:
    auth = JwtAuth(ACCESS_KEY, SECRET_KEY, clock=Clock(1_000_000.0))
    tokens: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(50):
            token = token_of(auth)
            with lock:
                tokens.append(token)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(tokens) == 400
    assert len(set(tokens)) == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"access_key": "", "secret_key": SECRET_KEY}, "access_key must be a non-empty string"),
        ({"access_key": ACCESS_KEY, "secret_key": " "}, "secret_key must be a non-empty string"),
        ({"access_key": ACCESS_KEY, "secret_key": SECRET_KEY, "ttl": 0}, "ttl must be"),
    ],
)
def test_jwt_rejects_bad_settings(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        JwtAuth(**kwargs)  # type: ignore[arg-type]


def test_auth_from_api_key() -> None:
    auth = auth_from(api_key="sk-1", access_key=None, secret_key="")

    assert isinstance(auth, BearerKey)
    assert auth.header() == "Bearer sk-1"


def test_auth_from_access_and_secret_keys() -> None:
    auth = auth_from(api_key="", access_key=ACCESS_KEY, secret_key=SECRET_KEY)

    assert isinstance(auth, JwtAuth)


@pytest.mark.parametrize(
    ("api_key", "access_key", "secret_key", "message"),
    [
        (
            None,
            None,
            None,
            "set KLING_API_KEY, or both KLING_ACCESS_KEY and KLING_SECRET_KEY",
        ),
        ("", " ", "", "set KLING_API_KEY, or both KLING_ACCESS_KEY and KLING_SECRET_KEY"),
        (None, "ak", None, "KLING_ACCESS_KEY is set but KLING_SECRET_KEY is missing"),
        (None, None, "sk", "KLING_SECRET_KEY is set but KLING_ACCESS_KEY is missing"),
        ("sk-1", "ak", "sk", "not both"),
    ],
)
def test_auth_from_explains_missing_or_mixed_settings(
    api_key: str | None, access_key: str | None, secret_key: str | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        auth_from(api_key=api_key, access_key=access_key, secret_key=secret_key)
