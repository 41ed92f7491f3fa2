"""The fake gateway's auth check: static API key and AK/SK JWT, with the provider's codes."""

from __future__ import annotations

import jwt
import pytest

from kling.fake.auth import Credentials, authorize
from kling.fake.errors import KlingError

NOW = 1_700_000_000.0
AK = "ak-test"
SK = "sk-test-secret-that-is-long-enough-for-hs256"
BOTH = Credentials(api_key="static-key", access_key=AK, secret_key=SK)


def token(*, key: str = SK, iss: str = AK, nbf: float = NOW - 5, exp: float = NOW + 1800) -> str:
    return jwt.encode({"iss": iss, "nbf": nbf, "exp": exp}, key, algorithm="HS256")


def code_of(header: str | None, credentials: Credentials = BOTH) -> int:
    """0 when the header is accepted, else the code of the 401 reply."""
    try:
        authorize(header, credentials, now=NOW)
    except KlingError as error:
        status, code = error.http_status, error.code
    else:
        return 0
    assert status == 401
    return code


@pytest.mark.parametrize(
    ("header", "code"),
    [
        ("Bearer static-key", 0),
        ("bearer static-key", 0),
        (f"Bearer {token()}", 0),
        (None, 1001),
        ("", 1001),
        ("Bearer", 1002),
        ("Basic static-key", 1002),
        ("Bearer wrong-key", 1002),
        (f"Bearer {token(key='another-secret-that-is-long-enough-for-hs256')}", 1002),
        (f"Bearer {token(iss='someone-else')}", 1002),
        (f"Bearer {token()[:-3]}xyz", 1002),
        (f"Bearer {token(nbf=NOW + 60)}", 1003),
        (f"Bearer {token(exp=NOW - 1)}", 1004),
        (f"Bearer {token(exp=NOW)}", 1004),
    ],
)
def test_either_mode_is_accepted_and_failures_carry_the_provider_codes(
    header: str | None, code: int
) -> None:
    assert code_of(header) == code


def test_a_jwt_without_exp_is_refused() -> None:
    unbounded = jwt.encode({"iss": AK, "nbf": NOW - 5}, SK, algorithm="HS256")
    assert code_of(f"Bearer {unbounded}") == 1002


def test_only_the_configured_modes_count() -> None:
    api_only = Credentials(api_key="static-key")
    assert code_of(f"Bearer {token()}", api_only) == 1002
    assert code_of("Bearer static-key", api_only) == 0
    jwt_only = Credentials(access_key=AK, secret_key=SK)
    assert code_of("Bearer static-key", jwt_only) == 1002
    assert code_of(f"Bearer {token()}", jwt_only) == 0


def test_no_auth_configured_lets_everything_in() -> None:
    assert code_of(None, Credentials()) == 0
    assert code_of("Bearer anything", Credentials()) == 0


def test_secrets_stay_out_of_repr() -> None:
    assert "static-key" not in repr(BOTH)
    assert SK not in repr(BOTH)
