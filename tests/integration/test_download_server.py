"""download_into against a real HTTP server on a loopback port, into a local file and S3.

The server serves 3 MB of deterministic bytes and can be told to misbehave: drop the
connection mid-body, stall, trickle, answer 500 or a fixed status, ignore Range, omit
Content-Length, redirect. It records the Range and If-Range headers it receives. Sleeping is
injected, so the tests never wait for a backoff. 127.0.0.1 is allowed (ALLOW_PRIVATE_HOSTS);
a second server on 127.0.0.2 stands for an internal address that is not. The last tests
download into S3 storage on moto's server.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests
import urllib3

from worker.outbound.download import (
    AttemptLimits,
    Downloaded,
    DownloadPermanent,
    DownloadRetryable,
    download_into,
)
from worker.outbound.netguard import AllowList, guarded_session
from worker.storage import Upload
from worker.storage.errors import ChecksumMismatch
from worker.storage.local import LocalStorage
from worker.storage.s3 import MIN_PART_SIZE, S3Storage

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MB = 1024 * 1024
DATA = random.Random(20240601).randbytes(3 * MB)
DATA_SHA256 = hashlib.sha256(DATA).hexdigest()
ETAG = '"v1"'
CHUNK = 64 * 1024
# Where the server breaks off. On a broken connection urllib3 drops the incomplete chunk it
# was reading, so the client resumes from the last whole chunk; a cut on a chunk boundary
# makes the expected Range header exact.
CUT = 15 * CHUNK  # 983040
LOCAL = AllowList.parse("127.0.0.1")
INTERNAL = "127.0.0.2"  # loopback too, but not in LOCAL: stands for any internal address


def download_file(url: str, dest: Path, **options: Any) -> Downloaded:
    """`download_into` the local file `dest`, as the archiver does into its storage."""
    return download_into(url, LocalStorage(dest.parent).open(dest.name), **options)


@dataclass
class Switches:
    """How the next responses misbehave. Counters count down as responses go out."""

    advertise_ranges: bool = True  # send Accept-Ranges: bytes
    honor_ranges: bool = True  # answer a Range request with 206 (else 200 and the whole file)
    content_length: bool = True  # else end the body by closing the connection
    status: int | None = None  # answer every request with this status and no body
    errors: int = 0  # answer the next K requests with 500
    cuts: int = 0  # drop the connection after `cut_after` body bytes, next K responses
    cut_after: int = 0
    stalls: int = 0  # stop sending after `stall_after` body bytes, next K responses
    stall_after: int = 0
    trickle: int = 0  # send the body `trickle` bytes at a time, `trickle_pause` s apart
    trickle_pause: float = 0.0
    redirects: list[str] = field(default_factory=list)  # answer 302 to these, in turn
    bounce: str | None = None  # answer 302 to this every request without "hop" in its query


@dataclass
class Source:
    """The served file, the switches, and what the server saw."""

    data: bytes
    url: str = ""
    switches: Switches = field(default_factory=Switches)
    ranges: list[str | None] = field(default_factory=list)
    if_ranges: list[str | None] = field(default_factory=list)
    authorizations: list[str | None] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    release: threading.Event = field(default_factory=threading.Event)

    @property
    def requests(self) -> int:
        return len(self.ranges)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, source: Source, host: str) -> None:
        super().__init__((host, 0), _Handler)
        self.source = source

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the client hanging up mid-body is part of the tests


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        source = self.server.source
        with source.lock:
            source.ranges.append(self.headers.get("Range"))
            source.if_ranges.append(self.headers.get("If-Range"))
            source.authorizations.append(self.headers.get("Authorization"))
            switches = source.switches
            location = switches.redirects.pop(0) if switches.redirects else None
            if location is None and switches.bounce is not None and "hop" not in self.path:
                location = switches.bounce
            if location is not None:
                self._redirect(location)
                return
            error = switches.errors > 0
            switches.errors -= error
            cut = not error and switches.cuts > 0
            switches.cuts -= cut
            stall = not error and not cut and switches.stalls > 0
            switches.stalls -= stall
        if switches.status is not None or error:
            self._empty(switches.status or 500)
            return

        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if match and switches.honor_ranges:
            start = int(match[1])
        body = source.data[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header(
                "Content-Range", f"bytes {start}-{len(source.data) - 1}/{len(source.data)}"
            )
        if switches.advertise_ranges:
            self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", ETAG)
        if switches.content_length:
            self.send_header("Content-Length", str(len(body)))
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()

        if cut:
            self.wfile.write(body[: switches.cut_after])
            self.close_connection = True
        elif stall:
            self.wfile.write(body[: switches.stall_after])
            source.release.wait(10)
            self.close_connection = True
        elif switches.trickle:
            for start in range(0, len(body), switches.trickle):
                self.wfile.write(body[start : start + switches.trickle])
                self.wfile.flush()
                if source.release.wait(switches.trickle_pause):
                    break
            self.close_connection = True
        else:
            self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _empty(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()


def _serve(data: bytes, host: str = "127.0.0.1") -> Iterator[Source]:
    source = Source(data)
    server = _Server(source, host)
    source.url = f"http://{host}:{server.server_address[1]}/video.mp4?sig=secret-token"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield source
    source.release.set()
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def source() -> Iterator[Source]:
    yield from _serve(DATA)


@pytest.fixture
def internal() -> Iterator[Source]:
    """A file server on an internal address downloads must not reach."""
    yield from _serve(DATA, INTERNAL)


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with guarded_session(LOCAL) as session:
        yield session


class FakeTime:
    """An injected clock and sleep: sleeping advances the clock and is recorded."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def fake() -> FakeTime:
    return FakeTime()


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return tmp_path / "archive"


def fetcher(
    url: str, open_upload: Callable[[], Upload], session: requests.Session, fake: FakeTime
) -> Callable[..., Any]:
    """download_into a new upload with the test's session and fake time; keywords override."""

    def fetch(**overrides: Any) -> Any:
        options: dict[str, Any] = {
            "deadline": fake.now + 3600,
            "session": session,
            "chunk_size": CHUNK,
            "clock": fake.clock,
            "sleep": fake.sleep,
        }
        options.update(overrides)
        return download_into(url, open_upload(), **options)

    return fetch


@pytest.fixture
def fetch(
    source: Source, session: requests.Session, fake: FakeTime, archive: Path
) -> Callable[..., Any]:
    """`fetcher` of the test's server into the local file "video.mp4"."""
    return fetcher(source.url, lambda: LocalStorage(archive).open("video.mp4"), session, fake)


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


# -- success -------------------------------------------------------------------------------


def test_full_download(
    source: Source, fetch: Callable[..., Any], fake: FakeTime, archive: Path
) -> None:
    result = fetch()

    assert Path(result.location) == archive / "video.mp4"
    assert (result.bytes, result.sha256) == (len(DATA), DATA_SHA256)
    assert Path(result.location).read_bytes() == DATA
    assert listing(archive) == ["video.mp4"]
    assert source.ranges == [None]
    assert fake.sleeps == []


def test_full_download_with_its_own_session(
    source: Source, archive: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)

    result = download_file(source.url, archive / "video.mp4", deadline=4e9, allow=LOCAL)

    assert result.sha256 == DATA_SHA256
    assert listing(archive) == ["video.mp4"]


def test_without_content_length_the_body_ends_at_close(
    source: Source, fetch: Callable[..., Any], archive: Path
) -> None:
    source.switches.content_length = False

    result = fetch()

    assert (result.bytes, result.sha256) == (len(DATA), DATA_SHA256)
    assert listing(archive) == ["video.mp4"]


def test_replaces_an_existing_file_with_the_complete_new_one(
    fetch: Callable[..., Any], archive: Path
) -> None:
    archive.mkdir()
    (archive / "video.mp4").write_bytes(b"an older copy")

    fetch()

    assert (archive / "video.mp4").read_bytes() == DATA
    assert listing(archive) == ["video.mp4"]


# -- resume and restart --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cuts", "cut_after", "ranges"),
    [
        (1, CUT, [None, "bytes=983040-"]),
        (3, 11 * CHUNK, [None, "bytes=720896-", "bytes=1441792-", "bytes=2162688-"]),
    ],
)
def test_cut_connection_resumes_with_range(
    source: Source,
    fetch: Callable[..., Any],
    fake: FakeTime,
    archive: Path,
    caplog: pytest.LogCaptureFixture,
    cuts: int,
    cut_after: int,
    ranges: list[str | None],
) -> None:
    # Given a server that drops the connection mid-body and supports ranges
    source.switches.cuts, source.switches.cut_after = cuts, cut_after

    # When we download
    with caplog.at_level(logging.INFO, logger="worker.outbound.download"):
        result = fetch()

    # Then each retry asks for the rest only, guarded by the ETag, and the file is whole
    assert source.ranges == ranges
    assert source.if_ranges == [None] + [ETAG] * cuts
    assert (result.bytes, result.sha256) == (len(DATA), DATA_SHA256)
    assert listing(archive) == ["video.mp4"]
    assert len(fake.sleeps) == cuts
    # And the retries are logged with their resume offset, without the URL's signature
    assert f"from byte {cut_after}" in caplog.text
    assert "secret-token" not in caplog.text


def test_cut_connection_without_range_support_restarts(
    source: Source, fetch: Callable[..., Any], archive: Path
) -> None:
    source.switches.advertise_ranges = source.switches.honor_ranges = False
    source.switches.cuts, source.switches.cut_after = 1, CUT

    result = fetch()

    assert source.ranges == [None, None]
    assert (result.bytes, result.sha256) == (len(DATA), DATA_SHA256)
    assert listing(archive) == ["video.mp4"]


def test_server_ignoring_range_restarts_from_zero(
    source: Source, fetch: Callable[..., Any], archive: Path
) -> None:
    # Given a server that advertises ranges but answers a Range request with a full 200
    source.switches.honor_ranges = False
    source.switches.cuts, source.switches.cut_after = 1, CUT

    result = fetch()

    # Then the second body replaces the first instead of being appended to it
    assert source.ranges == [None, "bytes=983040-"]
    assert (result.bytes, result.sha256) == (len(DATA), DATA_SHA256)
    assert (archive / "video.mp4").read_bytes() == DATA


def test_stalled_body_times_out_and_resumes(
    source: Source, fetch: Callable[..., Any], archive: Path
) -> None:
    source.switches.stalls, source.switches.stall_after = 1, CUT

    result = fetch(timeout=(2.0, 0.3))

    assert source.ranges == [None, "bytes=983040-"]
    assert result.sha256 == DATA_SHA256


def test_500_twice_then_ok(source: Source, fetch: Callable[..., Any], fake: FakeTime) -> None:
    source.switches.errors = 2

    result = fetch()

    assert result.sha256 == DATA_SHA256
    assert source.requests == 3
    assert len(fake.sleeps) == 2
    assert all(0 <= s <= 60 for s in fake.sleeps)


# -- giving up -----------------------------------------------------------------------------


def test_keeps_cutting_until_max_attempts(
    source: Source, fetch: Callable[..., Any], fake: FakeTime, archive: Path
) -> None:
    source.switches.cuts, source.switches.cut_after = 1000, 500_000

    with pytest.raises(DownloadRetryable, match="3 attempts"):
        fetch(max_attempts=3)

    assert source.requests == 3
    assert len(fake.sleeps) == 2
    assert listing(archive) == []


def test_keeps_cutting_until_the_deadline(
    source: Source, fetch: Callable[..., Any], fake: FakeTime, archive: Path
) -> None:
    # Given a server that never lets a body finish, and 20 seconds to go
    source.switches.advertise_ranges = source.switches.honor_ranges = False
    source.switches.cuts, source.switches.cut_after = 1000, 500_000
    deadline = fake.now + 20

    with pytest.raises(DownloadRetryable, match="deadline"):
        fetch(deadline=deadline)

    # Then it retried with backoff but never slept past the deadline, and kept nothing
    assert source.requests == len(fake.sleeps) + 1 > 2
    assert fake.now < deadline
    assert listing(archive) == []


def test_deadline_already_passed_is_permanent(
    source: Source, fetch: Callable[..., Any], fake: FakeTime, archive: Path
) -> None:
    with pytest.raises(DownloadPermanent, match="deadline passed"):
        fetch(deadline=fake.now - 1)

    assert source.requests == 0
    assert listing(archive) == []


@pytest.mark.parametrize("status", [403, 404, 410, 400])
def test_client_errors_are_permanent_at_once(
    source: Source, fetch: Callable[..., Any], fake: FakeTime, archive: Path, status: int
) -> None:
    source.switches.status = status

    with pytest.raises(DownloadPermanent, match=f"HTTP {status}"):
        fetch()

    assert source.requests == 1
    assert fake.sleeps == []
    assert listing(archive) == []


def test_bad_scheme_is_permanent_without_a_request(
    source: Source, session: requests.Session, archive: Path
) -> None:
    with pytest.raises(DownloadPermanent, match="only http and https"):
        download_file("file:///etc/passwd", archive / "x", deadline=4e9, session=session)

    assert source.requests == 0
    assert listing(archive) == []


def test_content_length_over_the_cap_is_permanent_without_reading(
    source: Source, fetch: Callable[..., Any], archive: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[int] = []
    read1 = urllib3.HTTPResponse.read1

    def spy(self: urllib3.HTTPResponse, *args: Any, **kwargs: Any) -> bytes:
        reads.append(1)
        return read1(self, *args, **kwargs)

    monkeypatch.setattr(urllib3.HTTPResponse, "read1", spy)

    with pytest.raises(DownloadPermanent, match="Content-Length 3145728 exceeds"):
        fetch(max_bytes=len(DATA) - 1)

    assert reads == []
    assert source.requests == 1
    assert listing(archive) == []


def test_body_over_the_cap_without_content_length_is_permanent(
    source: Source, fetch: Callable[..., Any], archive: Path
) -> None:
    source.switches.content_length = False

    with pytest.raises(DownloadPermanent, match="exceeds the cap"):
        fetch(max_bytes=1 * MB)

    assert source.requests == 1
    assert listing(archive) == []


@pytest.mark.parametrize(
    ("switch", "max_bytes", "error"),
    [
        ({"status": 404}, 4 * MB, DownloadPermanent),
        ({"cuts": 1000, "cut_after": CUT}, 4 * MB, DownloadRetryable),
        ({"content_length": False}, 2 * MB, DownloadPermanent),
    ],
)
def test_existing_file_survives_a_failed_download(
    source: Source,
    fetch: Callable[..., Any],
    archive: Path,
    switch: dict[str, Any],
    max_bytes: int,
    error: type[Exception],
) -> None:
    archive.mkdir()
    (archive / "video.mp4").write_bytes(b"the complete older copy")
    for name, value in switch.items():
        setattr(source.switches, name, value)

    with pytest.raises(error):
        fetch(max_attempts=2, max_bytes=max_bytes)

    assert (archive / "video.mp4").read_bytes() == b"the complete older copy"
    assert listing(archive) == ["video.mp4"]


def test_interrupt_leaves_no_temp_file(
    source: Source, fetch: Callable[..., Any], archive: Path
) -> None:
    # Given a partial body on disk, waiting for a retry
    source.switches.cuts, source.switches.cut_after = 1, CUT

    def interrupted(seconds: float) -> None:
        assert listing(archive)[0].endswith(".part")
        raise KeyboardInterrupt

    # When the worker is interrupted during the backoff
    with pytest.raises(KeyboardInterrupt):
        fetch(sleep=interrupted)

    # Then the temp file is gone and nothing took the destination's place
    assert listing(archive) == []


def test_file_and_directory_are_synced_before_and_after_the_rename(
    fetch: Callable[..., Any], disk_events: list[str]
) -> None:
    fetch()

    assert disk_events == ["fsync-file", "replace", "fsync-dir"]


class LosesTheFirstChunk:
    """An upload that silently drops the first chunk it is given, as a buggy store might."""

    def __init__(self, inner: Upload) -> None:
        self.inner, self.lost = inner, False

    @property
    def offset(self) -> int:
        return self.inner.offset

    @property
    def sha256(self) -> str:
        return self.inner.sha256

    def write(self, chunk: bytes) -> None:
        if self.lost:
            self.inner.write(chunk)
        self.lost = True

    def rewind(self) -> None:
        self.inner.rewind()

    def commit(self, *, size: int) -> str:
        return self.inner.commit(size=size)

    def abort(self) -> None:
        self.inner.abort()


def test_an_upload_that_does_not_hold_what_was_written_is_never_committed(
    source: Source, session: requests.Session, fake: FakeTime, archive: Path
) -> None:
    # Given an upload that loses bytes: the resume from its offset fills it up to the
    # announced size, but with the wrong bytes
    lossy = fetcher(
        source.url,
        lambda: LosesTheFirstChunk(LocalStorage(archive).open("video.mp4")),
        session,
        fake,
    )

    # Then the size the downloader counted does not match, and nothing is kept
    with pytest.raises(ChecksumMismatch, match="were written"):
        lossy()
    assert len(source.ranges) == 2  # the whole body, then a resume from the upload's offset
    assert listing(archive) == []


# -- destinations and redirects ------------------------------------------------------------------


def test_the_default_allows_no_internal_address(source: Source, archive: Path) -> None:
    # Given no allow list at all: even the file server on 127.0.0.1 is internal
    with pytest.raises(DownloadPermanent, match=r"127\.0\.0\.1, a loopback address") as caught:
        download_file(source.url, archive / "video.mp4", deadline=4e9)

    assert "ALLOW_PRIVATE_HOSTS" in str(caught.value)
    assert source.requests == 0
    assert listing(archive) == []


def test_a_plain_session_is_refused_before_any_request(source: Source, archive: Path) -> None:
    with (
        requests.Session() as plain,
        pytest.raises(ValueError, match="guarded_session"),
    ):
        download_file(source.url, archive / "video.mp4", deadline=4e9, session=plain)

    assert source.requests == 0
    assert listing(archive) == []


def test_redirect_to_an_internal_address_is_refused_and_never_reached(
    source: Source,
    internal: Source,
    fetch: Callable[..., Any],
    fake: FakeTime,
    archive: Path,
) -> None:
    # Given an allowed file host that redirects to an internal one (say, a metadata service)
    source.switches.redirects = [internal.url]

    # When we download
    with pytest.raises(DownloadPermanent) as caught:
        fetch()

    # Then it is refused for good, naming the address and the way to allow it
    message = str(caught.value)
    assert f"redirected to http://{INTERNAL}:" in message
    assert f"refusing to connect to {INTERNAL}, a loopback address" in message
    assert "list it in ALLOW_PRIVATE_HOSTS" in message
    assert "secret-token" not in message
    # And the internal server got no request, nothing was retried, nothing was stored
    assert internal.requests == 0
    assert source.requests == 1
    assert fake.sleeps == []
    assert listing(archive) == []


def test_redirect_to_an_internal_address_stores_nothing_in_s3(
    big_source: Source,
    internal: Source,
    fetch_s3: Callable[..., Any],
    s3: S3Client,
    bucket: str,
) -> None:
    big_source.switches.redirects = [internal.url]

    with pytest.raises(DownloadPermanent, match="loopback address"):
        fetch_s3()

    assert internal.requests == 0
    assert stored(s3, bucket) == ([], [])


def test_an_internal_address_named_in_the_allow_list_is_reached(
    source: Source, internal: Source, fake: FakeTime, archive: Path
) -> None:
    source.switches.redirects = [internal.url]

    with guarded_session(AllowList.parse(f"127.0.0.1, {INTERNAL}")) as session:
        result = download_file(source.url, archive / "video.mp4", deadline=4e9, session=session)

    assert result.sha256 == DATA_SHA256
    assert (source.requests, internal.requests) == (1, 1)


def _resolving(monkeypatch: pytest.MonkeyPatch, names: dict[str, str]) -> None:
    """Make `names` resolve to the given addresses, as a DNS server would."""
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        return real(names.get(host, host), *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A bare listening socket on the internal address: did anyone even connect?"""
    with socket.create_server((INTERNAL, 0)) as sock:
        sock.setblocking(False)
        yield sock


def test_a_name_resolving_to_an_internal_address_is_refused_without_connecting(
    source: Source,
    listener: socket.socket,
    fetch: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a public-looking name whose DNS answer is an internal address
    _resolving(monkeypatch, {"files.cdn.test": INTERNAL})
    port = listener.getsockname()[1]
    source.switches.redirects = [f"http://files.cdn.test:{port}/v.mp4?sig=hop-secret"]

    with pytest.raises(DownloadPermanent) as caught:
        fetch()

    # Then the address it resolved to is what is judged, and no connection is even opened
    assert f"files.cdn.test ({INTERNAL}), a loopback address" in str(caught.value)
    assert "hop-secret" not in str(caught.value)
    with pytest.raises(BlockingIOError):
        listener.accept()


def test_a_name_in_the_allow_list_may_resolve_to_an_internal_address(
    source: Source,
    internal: Source,
    fake: FakeTime,
    archive: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _resolving(monkeypatch, {"mirror.internal": INTERNAL})
    port = internal.url.split(":")[2].split("/")[0]
    source.switches.redirects = [f"http://mirror.internal:{port}/video.mp4"]

    with guarded_session(AllowList.parse("127.0.0.1,mirror.internal")) as session:
        result = download_file(source.url, archive / "video.mp4", deadline=4e9, session=session)

    assert result.sha256 == DATA_SHA256
    assert internal.requests == 1


def test_an_ipv6_loopback_redirect_is_refused(
    source: Source, fetch: Callable[..., Any], archive: Path
) -> None:
    try:
        six = socket.create_server(("::1", 0), family=socket.AF_INET6)
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with six:
        six.setblocking(False)
        source.switches.redirects = [f"http://[::1]:{six.getsockname()[1]}/v.mp4"]

        with pytest.raises(DownloadPermanent, match=r"refusing to connect to ::1, a loopback"):
            fetch()

        with pytest.raises(BlockingIOError):
            six.accept()
    assert listing(archive) == []


@pytest.mark.parametrize(
    "location",
    ["http://[::ffff:127.0.0.2]:{port}/v.mp4", "http://2130706434:{port}/v.mp4"],
    ids=["ipv4-mapped-ipv6", "decimal-ipv4"],
)
def test_other_spellings_of_an_internal_address_are_refused(
    source: Source,
    listener: socket.socket,
    fetch: Callable[..., Any],
    location: str,
) -> None:
    source.switches.redirects = [location.format(port=listener.getsockname()[1])]

    with pytest.raises(DownloadPermanent, match="loopback address"):
        fetch()

    with pytest.raises(BlockingIOError):
        listener.accept()


@pytest.mark.parametrize(("redirects", "ok"), [(1, True), (5, True), (6, False)])
def test_at_most_five_redirects_are_followed(
    source: Source,
    fetch: Callable[..., Any],
    fake: FakeTime,
    archive: Path,
    redirects: int,
    ok: bool,
) -> None:
    # Given a host that sends us round in circles `redirects` times (relative Locations)
    source.switches.redirects = [f"/video.mp4?hop={n}" for n in range(redirects)]

    if ok:
        assert fetch().sha256 == DATA_SHA256
        assert listing(archive) == ["video.mp4"]
    else:
        with pytest.raises(DownloadPermanent, match="more than 5 redirects"):
            fetch()
        assert listing(archive) == []
    # Then the first request and each redirect followed reached the server; no retries
    assert source.requests == min(redirects, 5) + 1
    assert fake.sleeps == []


def test_a_redirect_to_another_scheme_is_refused(
    source: Source, fetch: Callable[..., Any], archive: Path
) -> None:
    source.switches.redirects = ["file:///etc/passwd"]

    with pytest.raises(DownloadPermanent, match="only http and https"):
        fetch()

    assert source.requests == 1
    assert listing(archive) == []


def test_a_resume_keeps_range_and_if_range_across_a_redirect(
    source: Source, fetch: Callable[..., Any], archive: Path
) -> None:
    # Given a file host reached through a redirect, whose first body breaks off
    source.switches.bounce = "/video.mp4?hop=1"
    source.switches.cuts, source.switches.cut_after = 1, CUT

    result = fetch()

    # Then each attempt starts at the URL it was given, and every hop carries the resume
    assert source.ranges == [None, None, "bytes=983040-", "bytes=983040-"]
    assert source.if_ranges == [None, None, ETAG, ETAG]
    assert result.sha256 == DATA_SHA256


def test_no_netrc_credentials_and_no_proxy_from_the_environment(
    source: Source, archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a .netrc with a password for the file host, and a proxy that does not answer
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login archivist password hunter2\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{closed.getsockname()[1]}")
        for name in ("NO_PROXY", "no_proxy", "http_proxy"):
            monkeypatch.delenv(name, raising=False)

        result = download_file(source.url, archive / "video.mp4", deadline=4e9, allow=LOCAL)

    # Then the file came straight from the host, and no credentials were sent
    assert result.sha256 == DATA_SHA256
    assert source.authorizations == [None]


# -- slow hosts ------------------------------------------------------------------------------------


def test_a_trickling_host_is_cut_by_the_minimum_rate_and_resumed(
    source: Source, fetch: Callable[..., Any], archive: Path
) -> None:
    # Given a host that sends about 20 kB/s, each piece well within the read timeout
    source.switches.trickle, source.switches.trickle_pause = 1000, 0.05
    limits = AttemptLimits(seconds=60.0, min_bytes_per_second=64 * 1024, window_seconds=0.3)

    # When we download with a minimum of 64 KiB/s measured over 0.3 s
    began = time.monotonic()
    with pytest.raises(DownloadRetryable, match="too slow") as caught:
        fetch(limits=limits, max_attempts=2, timeout=(2.0, 5.0))
    took = time.monotonic() - began

    # Then each attempt is cut within its window, not after the 150 s the body would take
    assert took < 3.0
    assert "below the minimum of 65536 bytes/s" in str(caught.value)
    # And the second attempt resumed where the first was cut
    assert source.ranges[0] is None
    assert re.fullmatch(r"bytes=[1-9]\d*-", source.ranges[1] or "")
    assert listing(archive) == []


def test_an_attempt_past_its_time_limit_is_cut_and_the_next_resumes(
    source: Source, fetch: Callable[..., Any], archive: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a clock that moves 1 s each time the download looks at it, and 5 s per attempt
    ticks = iter(range(1_000_000))
    limits = AttemptLimits(seconds=5.0, min_bytes_per_second=0)

    with caplog.at_level(logging.WARNING, logger="worker.outbound.download"):
        result = fetch(limits=limits, monotonic=lambda: float(next(ticks)))

    # Then every attempt was cut after a few pieces, each next one resuming with Range
    assert result.sha256 == DATA_SHA256
    assert source.requests > 2
    offsets = [int(r.removeprefix("bytes=").removesuffix("-")) for r in source.ranges[1:] if r]
    assert len(offsets) == source.requests - 1
    assert offsets == sorted(set(offsets))
    assert "past its limit of 5 s" in caplog.text
    assert listing(archive) == ["video.mp4"]


def test_a_stalled_trickle_hits_the_attempt_limit_in_real_time(
    source: Source, fetch: Callable[..., Any]
) -> None:
    # Given a host sending a byte every 0.1 s: under any read timeout, forever
    source.switches.trickle, source.switches.trickle_pause = 1, 0.1
    limits = AttemptLimits(seconds=0.5, min_bytes_per_second=0)

    began = time.monotonic()
    with pytest.raises(DownloadRetryable, match="past its limit"):
        fetch(limits=limits, max_attempts=1, timeout=(2.0, 5.0))

    assert time.monotonic() - began < 2.0


# -- signed URLs stay secret ---------------------------------------------------------------------

SIGNED = "X-Amz-Signature=secret123"


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/video.mp4?{SIGNED}"


def _texts(exc: BaseException) -> str:
    """The message of `exc` and of everything chained to it, as a traceback would show."""
    texts, seen = [], set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts.append(f"{current!r} {current}")
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__
        )
    return "\n".join(texts)


@pytest.mark.parametrize(
    ("setup", "error"),
    [
        ("refused", DownloadRetryable),
        ("404", DownloadPermanent),
        ("cut", DownloadRetryable),
        ("internal", DownloadPermanent),
        ("loop", DownloadPermanent),
        ("scheme", DownloadPermanent),
        ("slow", DownloadRetryable),
        ("bad-port", DownloadPermanent),
    ],
)
def test_no_error_or_log_line_carries_the_query_string(
    source: Source,
    internal: Source,
    fetch: Callable[..., Any],
    archive: Path,
    session: requests.Session,
    fake: FakeTime,
    caplog: pytest.LogCaptureFixture,
    setup: str,
    error: type[Exception],
) -> None:
    url = source.url.replace("sig=secret-token", SIGNED)
    hop = f"?{SIGNED}&hop=1"
    limits = AttemptLimits()
    match setup:
        case "refused":
            url = _closed_port_url()
        case "404":
            source.switches.status = 404
        case "cut":
            source.switches.cuts, source.switches.cut_after = 10, CUT
        case "internal":
            source.switches.redirects = [internal.url.replace("?sig=secret-token", hop)]
        case "loop":
            source.switches.redirects = [f"/video.mp4{hop}"] * 6
        case "scheme":
            source.switches.redirects = [f"ftp://127.0.0.1/video.mp4{hop}"]
        case "slow":
            source.switches.trickle, source.switches.trickle_pause = 1000, 0.05
            limits = AttemptLimits(window_seconds=0.2)
        case "bad-port":
            url = f"http://127.0.0.1:99999/video.mp4?{SIGNED}"

    with caplog.at_level(logging.DEBUG, logger="worker"), pytest.raises(error) as caught:
        download_file(
            url,
            archive / "video.mp4",
            deadline=fake.now + 3600,
            session=session,
            limits=limits,
            max_attempts=2,
            timeout=(2.0, 5.0),
            clock=fake.clock,
            sleep=fake.sleep,
        )

    assert "secret123" not in _texts(caught.value)
    assert "secret123" not in caplog.text
    assert internal.requests == 0
    assert listing(archive) == []


# -- into S3 storage ---------------------------------------------------------------------------

# Three 5 MiB parts and a tail; cut in the second part, on a chunk boundary.
BIG = random.Random(20240602).randbytes(3 * MIN_PART_SIZE + 100_000)
BIG_SHA256 = hashlib.sha256(BIG).hexdigest()
BIG_CUT = MIN_PART_SIZE + 40 * CHUNK


@pytest.fixture
def big_source() -> Iterator[Source]:
    yield from _serve(BIG)


@pytest.fixture
def bucket_storage(s3: S3Client, bucket: str) -> S3Storage:
    return S3Storage(bucket, "archive", s3, part_size=MIN_PART_SIZE)


@pytest.fixture
def fetch_s3(
    big_source: Source, session: requests.Session, fake: FakeTime, bucket_storage: S3Storage
) -> Callable[..., Any]:
    """`fetcher` of the big file into an S3 upload of "video.mp4"."""
    return fetcher(big_source.url, lambda: bucket_storage.open("video.mp4"), session, fake)


def stored(s3: S3Client, bucket: str) -> tuple[list[str], list[str]]:
    """The bucket's keys and its open multipart uploads."""
    objects = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
    uploads = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return [o["Key"] for o in objects], [u["Key"] for u in uploads]


def test_into_s3_whole(
    big_source: Source, fetch_s3: Callable[..., Any], s3: S3Client, bucket: str
) -> None:
    result = fetch_s3()

    assert result.location == f"s3://{bucket}/archive/video.mp4"
    assert (result.bytes, result.sha256) == (len(BIG), BIG_SHA256)
    body = s3.get_object(Bucket=bucket, Key="archive/video.mp4")["Body"].read()
    assert hashlib.sha256(body).hexdigest() == BIG_SHA256
    assert stored(s3, bucket) == (["archive/video.mp4"], [])


def test_into_s3_cut_connection_resumes_with_range(
    big_source: Source,
    fetch_s3: Callable[..., Any],
    fake: FakeTime,
    s3: S3Client,
    bucket: str,
) -> None:
    # Given a server that drops the connection in the second part and supports ranges
    big_source.switches.cuts, big_source.switches.cut_after = 1, BIG_CUT

    # When we download into the bucket
    result = fetch_s3()

    # Then the retry asks for the rest only: the upload kept its part and its buffer
    assert big_source.ranges == [None, f"bytes={BIG_CUT}-"]
    assert len(fake.sleeps) == 1
    assert (result.bytes, result.sha256) == (len(BIG), BIG_SHA256)
    body = s3.get_object(Bucket=bucket, Key="archive/video.mp4")["Body"].read()
    assert hashlib.sha256(body).hexdigest() == BIG_SHA256
    assert stored(s3, bucket) == (["archive/video.mp4"], [])


@pytest.mark.parametrize(
    ("advertise", "ranges"),
    [(True, [None, f"bytes={BIG_CUT}-"]), (False, [None, None])],
)
def test_into_s3_restart_from_zero(
    big_source: Source,
    fetch_s3: Callable[..., Any],
    s3: S3Client,
    bucket: str,
    advertise: bool,
    ranges: list[str | None],
) -> None:
    # Given a server that cannot resume (it ignores Range, or never offered it)
    big_source.switches.advertise_ranges = advertise
    big_source.switches.honor_ranges = False
    big_source.switches.cuts, big_source.switches.cut_after = 1, BIG_CUT

    result = fetch_s3()

    # Then the second body replaced the first: the object is byte-identical
    assert big_source.ranges == ranges
    assert (result.bytes, result.sha256) == (len(BIG), BIG_SHA256)
    body = s3.get_object(Bucket=bucket, Key="archive/video.mp4")["Body"].read()
    assert hashlib.sha256(body).hexdigest() == BIG_SHA256
    assert stored(s3, bucket) == (["archive/video.mp4"], [])


@pytest.mark.parametrize(
    ("switch", "error"),
    [
        ({"cuts": 1000, "cut_after": BIG_CUT}, DownloadRetryable),
        ({"status": 404}, DownloadPermanent),
    ],
)
def test_into_s3_failure_leaves_no_object_and_no_open_upload(
    big_source: Source,
    fetch_s3: Callable[..., Any],
    s3: S3Client,
    bucket: str,
    switch: dict[str, Any],
    error: type[Exception],
) -> None:
    for name, value in switch.items():
        setattr(big_source.switches, name, value)

    with pytest.raises(error):
        fetch_s3(max_attempts=2)

    assert stored(s3, bucket) == ([], [])


def test_into_s3_interrupt_aborts_the_multipart_upload(
    big_source: Source, fetch_s3: Callable[..., Any], s3: S3Client, bucket: str
) -> None:
    # Given a part in the bucket's open upload, waiting for a retry
    big_source.switches.cuts, big_source.switches.cut_after = 1, BIG_CUT

    def interrupted(seconds: float) -> None:
        assert stored(s3, bucket) == ([], ["archive/video.mp4"])
        raise KeyboardInterrupt

    # When the worker is interrupted during the backoff
    with pytest.raises(KeyboardInterrupt):
        fetch_s3(sleep=interrupted)

    # Then the upload is aborted and nothing is visible
    assert stored(s3, bucket) == ([], [])
