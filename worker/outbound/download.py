"""Streaming, resumable download of one file over HTTP(S) into archive storage.

The archiver calls `download_into` to copy a video into its storage (`worker.storage`)
before the provider deletes it. The body streams into an `Upload`, which hashes what it
holds; only a complete, verified object is committed, so the final name never holds a partial
video. Failed attempts are retried with backoff (`worker.core.retry`, `Kind.DOWNLOAD`),
resuming with a `Range` request from the upload's offset when the server supports it, and
starting the upload over when it does not.

Every connection goes through `worker.outbound.netguard`: a URL (or a redirect, at most
`MAX_REDIRECTS` of them) that leads to a loopback, private or link-local address is refused
for good unless ``ALLOW_PRIVATE_HOSTS`` names it. Each attempt has a time limit and a minimum
throughput (`AttemptLimits`), so a host that trickles the body is cut off and resumed later
instead of holding a worker for hours. Messages name URLs by `worker.outbound.urls.display`
only: a signed URL's query string never reaches an error or a log line.

The decisions (is this URL acceptable, how long to wait, what to do with a reply, where to
resume, where a redirect leads, whether an attempt is too slow) are pure functions below;
`download_into` only does the I/O they ask for.
"""

from __future__ import annotations

import enum
import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import urljoin

import requests
import urllib3
from urllib3.poolmanager import PoolManager
from urllib3.response import BaseHTTPResponse

from kling.client import USER_AGENT
from worker.core import retry
from worker.outbound.netguard import AllowList, DestinationRefused, guarded_pools, guarded_session
from worker.outbound.pace import DEFAULT_LIMITS, AttemptLimits, Meter
from worker.outbound.urls import describe_error, display, http_problem
from worker.storage import Upload

__all__ = [
    "MAX_REDIRECTS",
    "Action",
    "AttemptLimits",
    "ContentRange",
    "DownloadError",
    "DownloadPermanent",
    "DownloadRetryable",
    "Downloaded",
    "Plan",
    "check_complete",
    "check_url",
    "download_into",
    "parse_content_length",
    "parse_content_range",
    "plan_reply",
    "redirect_target",
    "request_headers",
    "resume_offset",
]

log = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({408, 425, 429})
"""Client-error statuses that mean "try again later" rather than "never"."""

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
"""Redirects followed per attempt; one more is a permanent failure."""


class DownloadError(Exception):
    """The download failed."""


class DownloadRetryable(DownloadError):
    """The download failed for now (network, 5xx, truncated body); a later attempt may work."""


class DownloadPermanent(DownloadError):
    """The download can never work (bad URL, 4xx, too large, deadline passed)."""


@dataclass(frozen=True)
class Downloaded:
    """A complete, verified object at `location` ("/abs/path" or "s3://bucket/key")."""

    location: str
    bytes: int
    sha256: str


# -- pure decisions ----------------------------------------------------------------------


def check_url(url: str) -> str:
    """Return `url` if it is an http(s) URL with a host; raise DownloadPermanent otherwise."""
    problem = http_problem(url)
    if problem is not None:
        raise DownloadPermanent(f"cannot download: {problem}")
    return url


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", re.IGNORECASE)


@dataclass(frozen=True)
class ContentRange:
    """A parsed `Content-Range: bytes start-end/total` (end inclusive; total None for `*`)."""

    start: int
    end: int
    total: int | None


def parse_content_range(value: str | None) -> ContentRange | None:
    """Parse a byte `Content-Range` header; None if it is missing or malformed."""
    if value is None:
        return None
    match = _CONTENT_RANGE.fullmatch(value.strip())
    if match is None:
        return None
    start, end = int(match[1]), int(match[2])
    total = None if match[3] == "*" else int(match[3])
    if end < start or (total is not None and end >= total):
        return None
    return ContentRange(start, end, total)


def parse_content_length(value: str | None) -> int | None:
    """Parse `Content-Length`; None if it is missing or not a plain non-negative integer."""
    if value is None:
        return None
    value = value.strip()
    return int(value) if value.isdigit() and value.isascii() else None


class Action(enum.Enum):
    """What to do with a reply."""

    WRITE = "write"  # stream the body into the file at Plan.offset
    RETRY = "retry"  # discard the reply, back off, try again
    FAIL = "fail"  # give up for good


@dataclass(frozen=True)
class Plan:
    """The decision for one HTTP reply, taken from its status and headers alone."""

    action: Action
    reason: str
    offset: int = 0
    """WRITE: where the body starts in the file; 0 means start over."""
    total: int | None = None
    """WRITE: size of the complete file, when the server said."""
    ranges: bool = False
    """WRITE: may a later attempt resume with a Range request?"""
    restart: bool = False
    """RETRY: the bytes received so far cannot be resumed; the next attempt starts at 0."""


def _headers_lower(headers: Mapping[str, str]) -> dict[str, str]:
    # By key, not items(): urllib3's headers give each repeat of a header as an item of its
    # own, and a repeated header must read as all its values ("100, 200"), not the last one.
    return {key.lower(): headers[key] for key in headers}


def _accepts_byte_ranges(headers: Mapping[str, str]) -> bool:
    value = headers.get("accept-ranges", "")
    return "bytes" in (token.strip().lower() for token in value.split(","))


def plan_reply(
    status: int, headers: Mapping[str, str], *, offset: int, total: int | None, max_bytes: int
) -> Plan:
    """Decide what to do with a reply to a request for the file from byte `offset` on.

    `total` is the complete size learnt from earlier replies (None if unknown). A 206 is
    accepted only if its Content-Range starts at exactly `offset` and its total matches;
    a 200 to a Range request means the server ignored it, so the file restarts at 0.
    """
    h = _headers_lower(headers)
    if status == 200:
        length = parse_content_length(h.get("content-length"))
        if length is not None and length > max_bytes:
            return Plan(Action.FAIL, f"Content-Length {length} exceeds the cap of {max_bytes}")
        reason = "server ignored Range, sent the whole file" if offset else "whole file"
        return Plan(Action.WRITE, reason, 0, length, _accepts_byte_ranges(h))
    if status == 206:
        return _plan_partial(h, offset=offset, total=total, max_bytes=max_bytes)
    if status == 416 and offset:
        return Plan(Action.RETRY, f"416 for Range from byte {offset}", restart=True)
    if status in RETRYABLE_STATUSES or 500 <= status <= 599:
        return Plan(Action.RETRY, f"HTTP {status}")
    return Plan(Action.FAIL, f"HTTP {status}")


def _plan_partial(h: Mapping[str, str], *, offset: int, total: int | None, max_bytes: int) -> Plan:
    raw = h.get("content-range")
    content_range = parse_content_range(raw)
    if content_range is None or content_range.total is None:
        return Plan(Action.RETRY, f"206 with unusable Content-Range {raw!r}", restart=True)
    if content_range.start != offset:
        return Plan(
            Action.RETRY,
            f"206 starts at byte {content_range.start}, asked for {offset}",
            restart=True,
        )
    if total is not None and content_range.total != total:
        return Plan(
            Action.RETRY,
            f"file size changed from {total} to {content_range.total}",
            restart=True,
        )
    if content_range.total > max_bytes:
        return Plan(Action.FAIL, f"file size {content_range.total} exceeds the cap of {max_bytes}")
    length = parse_content_length(h.get("content-length"))
    span = content_range.end - content_range.start + 1
    if length is not None and length != span:
        return Plan(
            Action.RETRY,
            f"206 Content-Length {length} disagrees with Content-Range {raw!r}",
            restart=True,
        )
    return Plan(Action.WRITE, f"resuming at byte {offset}", offset, content_range.total, True)


def resume_offset(received: int, total: int | None, ranges: bool) -> int:
    """Byte to ask for next: `received` if the server can resume a file of known size, else 0."""
    if ranges and total is not None and 0 < received < total:
        return received
    return 0


def request_headers(offset: int, etag: str | None) -> dict[str, str]:
    """Headers for a request from byte `offset`; If-Range guards a resume with a strong ETag."""
    headers = {"Accept-Encoding": "identity"}  # byte offsets and sizes refer to the raw file
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if etag and not etag.startswith("W/"):
            headers["If-Range"] = etag
    return headers


def check_complete(received: int, total: int | None) -> str | None:
    """Why a body that ended after `received` bytes is incomplete, or None if it is whole."""
    if total is None or received == total:
        return None
    if received < total:
        return f"body truncated at byte {received} of {total}"
    return f"body ran {received - total} bytes past its announced size {total}"


def redirect_target(
    url: str,
    status: int,
    headers: Mapping[str, str],
    *,
    hops: int,
    max_redirects: int = MAX_REDIRECTS,
) -> str | None:
    """Where a reply to a request for `url` redirects to; None when it is no redirect.

    `hops` is the number of redirects followed so far. A redirect without Location is left
    to `plan_reply` (a permanent "HTTP 3xx"). Raises DownloadPermanent for one redirect more
    than `max_redirects`, or a Location that is not an http(s) URL with a host. Whether the
    target's address may be reached is for the connection to check (`worker.outbound.netguard`).
    """
    if status not in REDIRECT_STATUSES:
        return None
    location = _headers_lower(headers).get("location", "").strip()
    if not location:
        return None
    try:
        target = urljoin(url, location)
    except ValueError:
        raise DownloadPermanent("redirected to a malformed URL") from None
    if hops >= max_redirects:
        raise DownloadPermanent(
            f"more than {max_redirects} redirects (the next to {display(target)})"
        )
    problem = http_problem(target)
    if problem is not None:
        raise DownloadPermanent(f"redirected to something that cannot be downloaded: {problem}")
    return target


# -- I/O ---------------------------------------------------------------------------------


class _Part:
    """The upload being filled, what went into it, what the server told us so far."""

    def __init__(self, upload: Upload) -> None:
        self.upload = upload
        if upload.offset:
            upload.rewind()
        self.kept = 0  # bytes written since the upload's last rewind: what it must hold
        self.written = 0  # bytes written over all attempts, to tell progress from a stall
        self.total: int | None = None
        self.ranges = False
        self.etag: str | None = None

    @property
    def received(self) -> int:
        """Bytes of the file the upload holds: where a resume starts.

        Asked of the upload itself, not taken from our own count: an upload that lost bytes
        then resumes from where it really is, and the commit finds it short (`kept`
        disagrees). Asked between attempts only; while a body streams, `_attempt` counts.
        """
        return self.upload.offset

    def restart(self) -> None:
        self.upload.rewind()
        self.kept = 0

    def write(self, chunk: bytes) -> None:
        self.upload.write(chunk)
        self.kept += len(chunk)
        self.written += len(chunk)


def _require_guard(http: requests.Session, url: str) -> PoolManager:
    """The guarded connection pools `http` fetches `url` through (`guarded_pools`)."""
    pools = guarded_pools(http, url)
    if pools is None:
        raise ValueError(
            "downloads need a session from worker.outbound.netguard.guarded_session() "
            f"(or none), not one that reaches {display(url)} unchecked"
        )
    return pools


def _open(
    http: requests.Session, url: str, headers: Mapping[str, str], timeout: tuple[float, float]
) -> BaseHTTPResponse:
    """GET `url`, following up to MAX_REDIRECTS redirects, each hop through the guard.

    Sent on the session's guarded connection pools directly (`guarded_pools`), with the
    session's own pool settings and none of requests' per-request work. Every hop carries
    the same headers, so a resume's Range and If-Range reach the server that answers; the
    next attempt starts again from `url`.
    """
    current, hops = url, 0
    limits = urllib3.Timeout(connect=timeout[0], read=timeout[1])
    sent = {"User-Agent": USER_AGENT, **headers}
    while True:
        pools = _require_guard(http, current)
        try:
            reply = pools.urlopen(
                "GET",
                current,
                headers=sent,
                redirect=False,
                retries=False,
                preload_content=False,
                decode_content=False,
                timeout=limits,
            )
        except DestinationRefused as exc:
            via = f" (redirected to {display(current)})" if hops else ""
            raise DownloadPermanent(f"{display(url)}{via}: {exc}") from None
        try:
            target = redirect_target(current, reply.status, reply.headers, hops=hops)
        except DownloadPermanent as exc:
            reply.close()
            raise DownloadPermanent(f"{display(url)}: {exc}") from None
        if target is None:
            return reply
        reply.close()
        current, hops = target, hops + 1


def _body(reply: BaseHTTPResponse, size: int) -> Iterator[bytes]:
    """The body as it arrives, in pieces of at most `size` bytes.

    Each piece is what one read from the connection gave (``read1``), unlike reading until
    `size` bytes have come: a host that trickles a byte at a time would hold that wait, and
    the worker, for as long as it liked.

    A body without a Content-Encoding (what ``Accept-Encoding: identity`` asks for) is read
    with ``decode_content=False``: urllib3 then hands over what the socket gave, where
    decoding passes every piece through its buffer and copies it once more for nothing. A
    server that encodes the body anyway is still decoded, as before. Once the body has been
    read to its end, urllib3 puts the connection back in its pool for the next download.
    """
    encoding = reply.headers.get("Content-Encoding", "").strip().lower()
    decode = encoding not in ("", "identity")
    while piece := reply.read1(size, decode_content=decode):
        yield piece


def _attempt(
    http: requests.Session,
    url: str,
    part: _Part,
    *,
    max_bytes: int,
    timeout: tuple[float, float],
    chunk_size: int,
    limits: AttemptLimits,
    monotonic: Callable[[], float],
) -> str | None:
    """One request. None when the file is complete, else why this attempt fell short."""
    offset = resume_offset(part.received, part.total, part.ranges)
    headers = request_headers(offset, part.etag)
    meter = Meter(limits, monotonic)
    with _open(http, url, headers, timeout) as reply:
        plan = plan_reply(
            reply.status, reply.headers, offset=offset, total=part.total, max_bytes=max_bytes
        )
        if plan.action is Action.FAIL:
            raise DownloadPermanent(f"{display(url)}: {plan.reason}")
        if plan.action is Action.RETRY:
            if plan.restart:
                part.ranges = False
            return plan.reason
        if plan.offset != part.received:
            if part.received:
                log.info(
                    "download %s: starting over, dropping %d bytes (%s)",
                    display(url),
                    part.received,
                    plan.reason,
                )
            part.restart()
        part.total, part.ranges = plan.total, plan.ranges
        if plan.offset == 0:
            part.etag = reply.headers.get("ETag")
        # Our own count while the body streams, for the cap and the meter; the upload's
        # offset, which the resume and the completeness check trust, is asked once at the end.
        received = plan.offset
        for chunk in _body(reply, chunk_size):
            part.write(chunk)
            received += len(chunk)
            if received > max_bytes:
                raise DownloadPermanent(
                    f"{display(url)}: body exceeds the cap of {max_bytes} bytes"
                )
            slow = meter.add(len(chunk)) if received != part.total else None
            if slow is not None:
                return slow
    return check_complete(part.received, part.total)


# urllib3's own, raised as they are (retries=False): a URL it cannot use is for good, and
# anything else that went wrong on the way (connect, TLS, a read timeout, a broken body) is
# worth another attempt.
_PERMANENT_REQUEST_ERRORS = (
    urllib3.exceptions.LocationParseError,
    urllib3.exceptions.LocationValueError,
    urllib3.exceptions.URLSchemeUnknown,
)
_RETRYABLE_REQUEST_ERRORS = (urllib3.exceptions.HTTPError,)


def _preflight(
    url: str,
    *,
    deadline: float,
    max_attempts: int | None,
    clock: Callable[[], float],
    session: requests.Session | None,
    allow: AllowList | None,
) -> None:
    """Refuse at once what can never work, before any request or storage is touched."""
    check_url(url)
    if max_attempts is not None and max_attempts < 1:
        raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
    if session is not None:
        if allow is not None:
            raise ValueError("pass allow to guarded_session(), not with a session of your own")
        _require_guard(session, url)
    now = clock()
    if now >= deadline:
        raise DownloadPermanent(f"{display(url)}: deadline passed {now - deadline:.0f}s ago")


def download_into(
    url: str,
    upload: Upload,
    *,
    deadline: float,
    max_bytes: int = 4 * 1024**3,
    session: requests.Session | None = None,
    allow: AllowList | None = None,
    limits: AttemptLimits = DEFAULT_LIMITS,
    timeout: tuple[float, float] = (5.0, 30.0),
    chunk_size: int = 1024 * 1024,
    max_attempts: int | None = None,
    clock: Callable[[], float] = time.time,
    monotonic: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Downloaded:
    """Download `url` into `upload` and commit it, retrying and resuming until `deadline`.

    The upload is ours from here on: it starts at byte 0, a resume continues from
    `upload.offset`, a server that cannot resume makes it `rewind`, success `commit`s it
    with the size of the body (the upload checks it holds exactly that) and reports the
    upload's sha256, and any failure `abort`s it (nothing remains).

    Connections go through `worker.outbound.netguard`: without a `session`, one is made that refuses
    internal addresses except those `allow` names (by default: none); a `session` given must
    come from `worker.outbound.netguard.guarded_session` (ValueError otherwise) and carries its own
    allow list.

    `deadline` is in `clock()` seconds (epoch by default). It decides whether another
    attempt starts; a transfer in progress is bounded by `limits` (measured on `monotonic`)
    and by `timeout` (connect, read) instead.
    Raises DownloadPermanent for what can never work (including a refused destination and
    too many redirects), DownloadRetryable when the attempts or the time ran out. Errors of
    the storage propagate unchanged: `OSError` from a local disk,
    `worker.storage.errors.StorageError` from a bucket.
    """
    try:
        _preflight(
            url,
            deadline=deadline,
            max_attempts=max_attempts,
            clock=clock,
            session=session,
            allow=allow,
        )
        http = session or guarded_session(allow)
        try:
            part = _Part(upload)
            _fetch(
                http,
                url,
                part,
                deadline=deadline,
                max_bytes=max_bytes,
                timeout=timeout,
                chunk_size=chunk_size,
                max_attempts=max_attempts,
                limits=limits,
                clock=clock,
                monotonic=monotonic,
                sleep=sleep,
            )
        finally:
            if session is None:
                http.close()
        location = upload.commit(size=part.kept)
    except BaseException:
        upload.abort()
        raise
    return Downloaded(location, part.kept, upload.sha256)


def _fetch(
    http: requests.Session,
    url: str,
    part: _Part,
    *,
    deadline: float,
    max_bytes: int,
    timeout: tuple[float, float],
    chunk_size: int,
    max_attempts: int | None,
    limits: AttemptLimits,
    clock: Callable[[], float],
    monotonic: Callable[[], float],
    sleep: Callable[[float], None],
) -> None:
    """Attempt until `part` is complete; backoff starts over after an attempt that progressed."""
    attempt = streak = 0
    while True:
        attempt += 1
        written = part.written
        try:
            reason = _attempt(
                http,
                url,
                part,
                max_bytes=max_bytes,
                timeout=timeout,
                chunk_size=chunk_size,
                limits=limits,
                monotonic=monotonic,
            )
        except _PERMANENT_REQUEST_ERRORS as exc:
            # `from None`: the library's own message, URL and query included, stays out
            # of every traceback too.
            raise DownloadPermanent(f"{display(url)}: {describe_error(exc)}") from None
        except _RETRYABLE_REQUEST_ERRORS as exc:
            reason = describe_error(exc)
        if reason is None:
            return
        if max_attempts is not None and attempt >= max_attempts:
            raise DownloadRetryable(f"{display(url)}: gave up after {attempt} attempts: {reason}")
        streak = 1 if part.written > written else streak + 1
        delay = retry.delay(retry.Kind.DOWNLOAD, streak)
        if clock() + delay >= deadline:
            raise DownloadRetryable(
                f"{display(url)}: deadline reached after {attempt} attempts: {reason}"
            )
        log.warning(
            "download %s: attempt %d failed (%s); retrying in %.1fs from byte %d",
            display(url),
            attempt,
            reason,
            delay,
            resume_offset(part.received, part.total, part.ranges),
        )
        sleep(delay)
