"""The provider's error table, mapped to exception types."""

from __future__ import annotations

import pytest

from kling.errors import (
    PERMANENT_CODES,
    RETRYABLE_CODES,
    AccountError,
    AmbiguousCreate,
    AuthError,
    InvalidRequest,
    KlingError,
    MalformedReply,
    NotFound,
    PermanentError,
    RetryableError,
    provider_error,
)

# (HTTP status, code, expected type) for every row of the table in KLING_API.md.
DOCUMENTED = [
    *[(401, code, AuthError) for code in range(1000, 1005)],
    (429, 1100, AccountError),
    (429, 1101, AccountError),
    (429, 1102, AccountError),
    (403, 1103, AccountError),
    (400, 1200, PermanentError),
    (400, 1201, PermanentError),
    (404, 1202, NotFound),
    (404, 1203, NotFound),
    (400, 1300, PermanentError),
    (400, 1301, PermanentError),
    (429, 1302, RetryableError),
    (429, 1303, RetryableError),
    (429, 1304, PermanentError),
    (500, 5000, RetryableError),
    (503, 5001, RetryableError),
    (504, 5002, RetryableError),
]


@pytest.mark.parametrize(("http_status", "code", "expected"), DOCUMENTED)
def test_documented_codes(http_status: int, code: int, expected: type[KlingError]) -> None:
    error = provider_error(code, http_status, "provider says no", "req-1")

    assert type(error) is expected
    assert (error.code, error.http_status, error.request_id) == (code, http_status, "req-1")
    assert error.message == "provider says no"
    assert isinstance(error, RetryableError) == (code in RETRYABLE_CODES)
    assert isinstance(error, PermanentError) == (code in PERMANENT_CODES)


def test_code_sets_cover_the_table_and_do_not_overlap() -> None:
    assert {code for _, code, _ in DOCUMENTED} == RETRYABLE_CODES | PERMANENT_CODES
    assert not RETRYABLE_CODES & PERMANENT_CODES


@pytest.mark.parametrize(
    ("code", "http_status", "expected"),
    [
        (None, 500, RetryableError),
        (None, 502, RetryableError),
        (None, 503, RetryableError),
        (None, 504, RetryableError),
        (None, 429, RetryableError),
        (None, 408, RetryableError),
        (None, 404, NotFound),
        (None, 401, AuthError),
        (None, 400, PermanentError),
        (None, 403, PermanentError),
        (None, 301, PermanentError),
        (None, 200, MalformedReply),
        (None, None, MalformedReply),
        (0, 503, RetryableError),  # code 0 says nothing; the status decides
        (9999, 200, PermanentError),  # unknown non-zero code
        (1400, 500, PermanentError),  # the code wins over the status
        (1102, 429, AccountError),  # quota spent: retrying only burns requests
        (5001, 400, RetryableError),
        (1202, 200, NotFound),
    ],
)
def test_fallbacks_and_precedence(
    code: int | None, http_status: int | None, expected: type[KlingError]
) -> None:
    assert type(provider_error(code, http_status, "x")) is expected


def test_1102_is_permanent_not_retryable() -> None:
    error = provider_error(1102, 429, "resource pack exhausted")

    assert isinstance(error, PermanentError)
    assert not isinstance(error, RetryableError)


def test_empty_message_falls_back_to_the_class_meaning() -> None:
    error = provider_error(1303, 429, "  ")

    assert error.message == RetryableError.__doc__
    assert "try again" in str(error)


def test_str_names_code_status_and_request_id() -> None:
    error = provider_error(1301, 400, "content safety", "abc")

    assert str(error) == "content safety (code 1301, HTTP 400, request_id abc)"
    assert "AccountError" not in repr(error)
    assert "PermanentError('content safety', code=1301" in repr(error)


def test_multi_line_docstrings_become_one_line_messages() -> None:
    assert "\n" not in AmbiguousCreate("").message
    assert AmbiguousCreate("").message.startswith("The create request may have reached")


def test_invalid_request_is_a_value_error() -> None:
    error = InvalidRequest("prompt is too long")

    assert isinstance(error, ValueError)
    assert isinstance(error, KlingError)
    assert error.code is None


@pytest.mark.parametrize(
    "cls",
    [
        KlingError,
        InvalidRequest,
        MalformedReply,
        RetryableError,
        PermanentError,
        AuthError,
        AccountError,
        NotFound,
        AmbiguousCreate,
    ],
)
def test_every_class_documents_its_meaning(cls: type[KlingError]) -> None:
    assert cls.__doc__
    assert cls.__doc__.strip()
