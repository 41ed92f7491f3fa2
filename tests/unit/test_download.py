"""The pure decisions of worker.outbound.download (with its pace and error texts), and how it
reads a body."""

from __future__ import annotations

import gzip
import io
import re

import pytest
import requests
import urllib3

from worker.outbound.download import (
    Action,
    ContentRange,
    DownloadPermanent,
    _body,
    check_complete,
    check_url,
    parse_content_length,
    parse_content_range,
    plan_reply,
    redirect_target,
    request_headers,
    resume_offset,
)
from worker.outbound.pace import AttemptLimits, pace_problem
from worker.outbound.urls import describe_error, display

MB = 1024 * 1024


# -- check_url -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/video.mp4",
        "https://cdn.example.com/a/b.mp4?sig=abc&exp=1",
        "HTTPS://EXAMPLE.COM/x",
        "http://127.0.0.1:8080/x",
        "http://[::1]:8080/x",
    ],
)
def test_check_url_accepts_http_and_https(url: str) -> None:
    assert check_url(url) == url


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/video.mp4",
        "file:///etc/passwd",
        "",
        "http://",
        "https:///path/only",
        "//example.com/video.mp4",
        "example.com/video.mp4",
        "javascript:alert(1)",
        "http://[::1/x",
        "http://example.com:99999/x",
    ],
)
def test_check_url_rejects_everything_else(url: str) -> None:
    with pytest.raises(DownloadPermanent, match="URL"):
        check_url(url)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://cdn.example.com/v.mp4?sig=secret", "https://cdn.example.com/v.mp4"),
        ("http://user:pw@host:8080/a#frag", "http://host:8080/a"),
    ],
)
def test_display_drops_secrets(url: str, shown: str) -> None:
    assert display(url) == shown


# -- header parsing ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("bytes 0-99/100", ContentRange(0, 99, 100)),
        ("bytes 100-2999/3000", ContentRange(100, 2999, 3000)),
        ("BYTES 5-5/6", ContentRange(5, 5, 6)),
        (" bytes 10-19/* ", ContentRange(10, 19, None)),
        (None, None),
        ("", None),
        ("bytes */3000", None),
        ("bytes 10-5/100", None),
        ("bytes 0-100/100", None),
        ("bytes=0-99/100", None),
        ("items 0-9/10", None),
        ("bytes -1-5/10", None),
        ("bytes 0-99/100, bytes 0-1/2", None),
    ],
)
def test_parse_content_range(value: str | None, parsed: ContentRange | None) -> None:
    assert parse_content_range(value) == parsed


@pytest.mark.parametrize(
    ("value", "parsed"),
    [("3000", 3000), (" 0 ", 0), (None, None), ("", None), ("-1", None), ("1e3", None)],
)
def test_parse_content_length(value: str | None, parsed: int | None) -> None:
    assert parse_content_length(value) == parsed


# -- what to do with a reply ---------------------------------------------------------------

CAP = 10 * MB


@pytest.mark.parametrize(
    ("status", "headers", "offset", "total", "action", "start", "size", "ranges", "restart"),
    [
        # A fresh 200: write from 0; resumable only if it advertised byte ranges.
        (200, {"Content-Length": "3000"}, 0, None, Action.WRITE, 0, 3000, False, False),
        (200, {"Content-Length": "3000", "Accept-Ranges": "bytes"}, 0, None,
         Action.WRITE, 0, 3000, True, False),
        (200, {"accept-ranges": "none"}, 0, None, Action.WRITE, 0, None, False, False),
        # 200 to a Range request: the server ignored it, start over from byte 0.
        (200, {"Content-Length": "3000"}, 1000, 3000, Action.WRITE, 0, 3000, False, False),
        # Over the cap: refuse before reading.
        (200, {"Content-Length": str(CAP + 1)}, 0, None, Action.FAIL, 0, None, False, False),
        (200, {"Content-Length": str(CAP)}, 0, None, Action.WRITE, 0, CAP, False, False),
        # A good 206 continues where we stopped.
        (206, {"Content-Range": "bytes 1000-2999/3000", "Content-Length": "2000"}, 1000, 3000,
         Action.WRITE, 1000, 3000, True, False),
        (206, {"Content-Range": "bytes 1000-1999/3000"}, 1000, 3000,
         Action.WRITE, 1000, 3000, True, False),
        # A 206 we cannot trust: retry, starting over.
        (206, {"Content-Range": "bytes 0-2999/3000"}, 1000, 3000,
         Action.RETRY, 0, None, False, True),
        (206, {"Content-Range": "bytes 1000-3999/4000"}, 1000, 3000,
         Action.RETRY, 0, None, False, True),
        (206, {"Content-Range": "bytes 1000-2999/*"}, 1000, 3000,
         Action.RETRY, 0, None, False, True),
        (206, {}, 1000, 3000, Action.RETRY, 0, None, False, True),
        (206, {"Content-Range": "bytes 1000-2999/3000", "Content-Length": "5"}, 1000, 3000,
         Action.RETRY, 0, None, False, True),
        (206, {"Content-Range": f"bytes 10-19/{CAP + 1}"}, 10, None,
         Action.FAIL, 0, None, False, False),
        (416, {"Content-Range": "bytes */3000"}, 1000, 3000, Action.RETRY, 0, None, False, True),
        # Transient server trouble: retry, keep what we have.
        (500, {}, 1000, 3000, Action.RETRY, 0, None, False, False),
        (502, {}, 0, None, Action.RETRY, 0, None, False, False),
        (503, {}, 0, None, Action.RETRY, 0, None, False, False),
        (429, {}, 0, None, Action.RETRY, 0, None, False, False),
        (408, {}, 0, None, Action.RETRY, 0, None, False, False),
        # Never going to work.
        (400, {}, 0, None, Action.FAIL, 0, None, False, False),
        (401, {}, 0, None, Action.FAIL, 0, None, False, False),
        (403, {}, 0, None, Action.FAIL, 0, None, False, False),
        (404, {}, 1000, 3000, Action.FAIL, 0, None, False, False),
        (410, {}, 0, None, Action.FAIL, 0, None, False, False),
        (416, {}, 0, None, Action.FAIL, 0, None, False, False),
        (204, {}, 0, None, Action.FAIL, 0, None, False, False),
        (304, {}, 0, None, Action.FAIL, 0, None, False, False),
    ],
)  # fmt: skip
def test_plan_reply(
    status: int,
    headers: dict[str, str],
    offset: int,
    total: int | None,
    action: Action,
    start: int,
    size: int | None,
    ranges: bool,
    restart: bool,
) -> None:
    plan = plan_reply(status, headers, offset=offset, total=total, max_bytes=CAP)
    assert (plan.action, plan.offset, plan.total, plan.ranges, plan.restart) == (
        action,
        start,
        size,
        ranges,
        restart,
    )
    assert plan.reason


def test_a_repeated_header_reads_as_all_its_values() -> None:
    # A reply's headers as urllib3 hands them over: two Content-Lengths that disagree are no
    # size at all, as their joined value "3000, 9000" is no number, never the last one alone.
    headers = urllib3.HTTPHeaderDict()
    headers.add("Content-Length", "3000")
    headers.add("content-length", "9000")
    repeated = plan_reply(200, headers, offset=0, total=None, max_bytes=CAP)
    joined = plan_reply(200, {"Content-Length": "3000, 9000"}, offset=0, total=None, max_bytes=CAP)
    assert repeated == joined
    assert repeated.total is None


@pytest.mark.parametrize(
    ("received", "total", "ranges", "offset"),
    [
        (1000, 3000, True, 1000),
        (1000, 3000, False, 0),
        (1000, None, True, 0),
        (0, 3000, True, 0),
        (3000, 3000, True, 0),
        (3500, 3000, True, 0),
    ],
)
def test_resume_offset(received: int, total: int | None, ranges: bool, offset: int) -> None:
    assert resume_offset(received, total, ranges) == offset


@pytest.mark.parametrize(
    ("offset", "etag", "expected"),
    [
        (0, '"v1"', {"Accept-Encoding": "identity"}),
        (5, None, {"Accept-Encoding": "identity", "Range": "bytes=5-"}),
        (5, '"v1"', {"Accept-Encoding": "identity", "Range": "bytes=5-", "If-Range": '"v1"'}),
        (5, 'W/"v1"', {"Accept-Encoding": "identity", "Range": "bytes=5-"}),
    ],
)
def test_request_headers(offset: int, etag: str | None, expected: dict[str, str]) -> None:
    assert request_headers(offset, etag) == expected


@pytest.mark.parametrize(
    ("received", "total", "complete"),
    [(3000, 3000, True), (0, 0, True), (5, None, True), (2999, 3000, False), (3001, 3000, False)],
)
def test_check_complete(received: int, total: int | None, complete: bool) -> None:
    assert (check_complete(received, total) is None) is complete


# -- redirect_target -----------------------------------------------------------------------

BASE = "https://cdn.example/a/v.mp4?sig=s"


@pytest.mark.parametrize(
    ("status", "headers", "hops", "target"),
    [
        (200, {"Location": "https://x/"}, 0, None),
        (206, {}, 0, None),
        (304, {"Location": "https://x/"}, 0, None),  # not a redirect
        (300, {"Location": "https://x/"}, 0, None),
        (302, {}, 0, None),  # no Location: plan_reply fails it as HTTP 302
        (302, {"Location": "  "}, 0, None),
        (301, {"Location": "https://other.example/v.mp4"}, 0, "https://other.example/v.mp4"),
        (302, {"location": "http://other.example/v.mp4?t=1"}, 2, "http://other.example/v.mp4?t=1"),
        (303, {"Location": "/b/v.mp4"}, 0, "https://cdn.example/b/v.mp4"),
        (307, {"Location": "w.mp4"}, 4, "https://cdn.example/a/w.mp4"),
        (308, {"Location": "//edge.example/v.mp4"}, 0, "https://edge.example/v.mp4"),
    ],
)
def test_redirect_target(
    status: int, headers: dict[str, str], hops: int, target: str | None
) -> None:
    assert redirect_target(BASE, status, headers, hops=hops) == target


@pytest.mark.parametrize(
    ("headers", "hops", "error"),
    [
        ({"Location": "https://x.example/v.mp4"}, 5, "more than 5 redirects"),
        (
            {"Location": "https://x.example/v.mp4?sig=hidden"},
            9,
            "the next to https://x.example/v.mp4",
        ),
        ({"Location": "file:///etc/passwd"}, 0, "only http and https"),
        ({"Location": "gopher://x.example/"}, 0, "only http and https"),
        ({"Location": "http://[::1/x"}, 0, "malformed URL"),
        ({"Location": "http://x.example:99999/v.mp4"}, 0, "malformed URL"),
    ],
)
def test_redirect_target_refuses(headers: dict[str, str], hops: int, error: str) -> None:
    with pytest.raises(DownloadPermanent, match=re.escape(error)) as caught:
        redirect_target(BASE, 302, headers, hops=hops)
    assert "hidden" not in str(caught.value)


def test_redirect_target_counts_against_its_own_limit() -> None:
    headers = {"Location": "/x"}
    assert redirect_target(BASE, 302, headers, hops=1, max_redirects=2) is not None
    with pytest.raises(DownloadPermanent, match="more than 2 redirects"):
        redirect_target(BASE, 302, headers, hops=2, max_redirects=2)


# -- pace_problem -----------------------------------------------------------------------------

LIMITS = AttemptLimits(seconds=100.0, min_bytes_per_second=1000.0, window_seconds=10.0)


@pytest.mark.parametrize(
    ("elapsed", "window", "window_bytes", "problem"),
    [
        (0.0, 0.0, 0, None),
        (5.0, 5.0, 0, None),  # the window is not complete yet: not judged
        (9.9, 9.9, 10, None),
        (10.0, 10.0, 10_000, None),  # exactly the minimum
        (10.0, 10.0, 9_999, "too slow: 1000 bytes/s over 10 s, below the minimum of 1000"),
        (30.0, 12.0, 1_200, "too slow: 100 bytes/s over 12 s"),
        (99.0, 10.0, 50_000, None),
        (100.0, 1.0, 50_000, "attempt took 100 s, past its limit of 100 s"),
        (250.0, 10.0, 0, "past its limit"),  # the time limit is reported first
    ],
)
def test_pace_problem(
    elapsed: float, window: float, window_bytes: int, problem: str | None
) -> None:
    found = pace_problem(LIMITS, elapsed=elapsed, window=window, window_bytes=window_bytes)
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert problem in found


def test_a_zero_minimum_turns_the_rate_check_off() -> None:
    limits = AttemptLimits(seconds=100.0, min_bytes_per_second=0, window_seconds=1.0)
    assert pace_problem(limits, elapsed=50.0, window=50.0, window_bytes=0) is None


@pytest.mark.parametrize(
    "kwargs",
    [{"seconds": 0}, {"seconds": -1}, {"window_seconds": 0}, {"min_bytes_per_second": -1}],
)
def test_attempt_limits_must_be_positive(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="attempt limits"):
        AttemptLimits(**kwargs)


# -- describe_error ---------------------------------------------------------------------------

SIGNED_PATH = "/v.mp4?X-Amz-Signature=secret123"


def _connection_error() -> requests.ConnectionError:
    pool = urllib3.HTTPConnectionPool("cdn.example", 443)
    refused = ConnectionRefusedError(111, "Connection refused")
    conn = urllib3.connection.HTTPConnection("cdn.example", 443)
    reason = urllib3.exceptions.NewConnectionError(conn, f"Failed: {refused}")
    reason.__cause__ = refused
    retries = urllib3.exceptions.MaxRetryError(pool, SIGNED_PATH, reason)
    return requests.ConnectionError(retries)


@pytest.mark.parametrize(
    ("exc", "described"),
    [
        (
            _connection_error(),
            "ConnectionError (MaxRetryError, NewConnectionError, ConnectionRefusedError): "
            "Connection refused",
        ),
        (requests.ReadTimeout(f"read timed out for {SIGNED_PATH}"), "ReadTimeout"),
        (
            urllib3.exceptions.ProtocolError(
                f"Connection broken at {SIGNED_PATH}", ConnectionResetError(104, "reset by peer")
            ),
            "ProtocolError (ConnectionResetError): reset by peer",
        ),
        (requests.exceptions.InvalidURL(f"Invalid URL 'http://x{SIGNED_PATH}'"), "InvalidURL"),
    ],
)
def test_describe_error_gives_types_and_never_the_url(exc: Exception, described: str) -> None:
    assert "secret123" in str(exc)  # what the libraries' own messages carry
    assert describe_error(exc) == described


# -- reading the body ------------------------------------------------------------------------

BODY = bytes(range(256)) * 1000


def reply_with(body: bytes, headers: dict[str, str]) -> urllib3.HTTPResponse:
    """A streamed reply whose connection holds `body`, as `_open` hands it over."""
    return urllib3.HTTPResponse(
        body=io.BytesIO(body), headers=headers, status=200, preload_content=False
    )


@pytest.mark.parametrize("headers", [{}, {"Content-Encoding": "identity"}])
def test_a_plain_body_arrives_as_sent_in_bounded_pieces(headers: dict[str, str]) -> None:
    pieces = list(_body(reply_with(BODY, headers), 4096))

    assert b"".join(pieces) == BODY
    assert max(len(piece) for piece in pieces) <= 4096


def test_a_plain_body_skips_urllib3s_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    # The decoder's buffer copies every piece once more: a body with no encoding goes around it
    reply = reply_with(BODY, {})
    asked: list[bool | None] = []
    read1 = reply.read1

    def spy(amt: int | None = None, decode_content: bool | None = None) -> bytes:
        asked.append(decode_content)
        return read1(amt, decode_content=decode_content)

    monkeypatch.setattr(reply, "read1", spy)
    assert b"".join(_body(reply, 64 * 1024)) == BODY
    assert set(asked) == {False}


def test_a_body_the_server_encoded_anyway_is_still_decoded() -> None:
    # Asked for identity, a server may gzip regardless: the file is what it decodes to
    reply = reply_with(gzip.compress(BODY), {"Content-Encoding": "gzip"})

    assert b"".join(_body(reply, 4096)) == BODY
