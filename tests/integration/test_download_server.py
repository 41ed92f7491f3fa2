"""download_file and download_into against a real HTTP server on a loopback port.

The server serves 3 MB of deterministic bytes and can be told to misbehave: drop the
connection mid-body, stall, answer 500 or a fixed status, ignore Range, omit Content-Length.
It records the Range and If-Range headers it receives. Sleeping is injected, so the tests
never wait for a backoff. The last tests download into S3 storage on moto's server.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import re
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests

from worker.download import (
    DownloadPermanent,
    DownloadRetryable,
    download_file,
    download_into,
)
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


@dataclass
class Source:
    """The served file, the switches, and what the server saw."""

    data: bytes
    url: str = ""
    switches: Switches = field(default_factory=Switches)
    ranges: list[str | None] = field(default_factory=list)
    if_ranges: list[str | None] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    release: threading.Event = field(default_factory=threading.Event)

    @property
    def requests(self) -> int:
        return len(self.ranges)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, source: Source) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
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
            switches = source.switches
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
        else:
            self.wfile.write(body)

    def _empty(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()


def _serve(data: bytes) -> Iterator[Source]:
    source = Source(data)
    server = _Server(source)
    source.url = f"http://127.0.0.1:{server.server_address[1]}/video.mp4?sig=secret-token"
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
def session() -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.trust_env = False  # never route loopback through a proxy from the environment
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


@pytest.fixture
def fetch(
    source: Source, session: requests.Session, fake: FakeTime, archive: Path
) -> Callable[..., Any]:
    """download_file with the test's server, session and fake time; keywords override."""

    def fetch(**overrides: Any) -> Any:
        options: dict[str, Any] = {
            "deadline": fake.now + 3600,
            "session": session,
            "chunk_size": CHUNK,
            "clock": fake.clock,
            "sleep": fake.sleep,
        }
        options.update(overrides)
        return download_file(source.url, archive / "video.mp4", **options)

    return fetch


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


# -- success -------------------------------------------------------------------------------


def test_full_download(
    source: Source, fetch: Callable[..., Any], fake: FakeTime, archive: Path
) -> None:
    result = fetch()

    assert result.path == archive / "video.mp4"
    assert (result.bytes, result.sha256) == (len(DATA), DATA_SHA256)
    assert result.path.read_bytes() == DATA
    assert listing(archive) == ["video.mp4"]
    assert source.ranges == [None]
    assert fake.sleeps == []


def test_full_download_with_its_own_session(
    source: Source, archive: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)

    result = download_file(source.url, archive / "video.mp4", deadline=4e9)

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
    with caplog.at_level(logging.INFO, logger="worker.download"):
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
    assert not archive.exists()


def test_content_length_over_the_cap_is_permanent_without_reading(
    source: Source, fetch: Callable[..., Any], archive: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[int] = []
    iter_content = requests.Response.iter_content

    def spy(self: requests.Response, *args: Any, **kwargs: Any) -> Iterator[Any]:
        reads.append(1)
        return iter_content(self, *args, **kwargs)

    monkeypatch.setattr(requests.Response, "iter_content", spy)

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
    fetch: Callable[..., Any], archive: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    fsync, replace = os.fsync, os.replace

    def spy_fsync(fd: int) -> None:
        events.append("fsync-dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync-file")
        fsync(fd)

    def spy_replace(src: Path, dst: Path) -> None:
        events.append("replace")
        replace(src, dst)

    monkeypatch.setattr("worker.storage.local.os.fsync", spy_fsync)
    monkeypatch.setattr("worker.storage.local.os.replace", spy_replace)

    fetch()

    assert events == ["fsync-file", "replace", "fsync-dir"]


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
    """download_into an S3 upload of "video.mp4" with the test's server and fake time."""

    def fetch(**overrides: Any) -> Any:
        options: dict[str, Any] = {
            "deadline": fake.now + 3600,
            "session": session,
            "chunk_size": CHUNK,
            "clock": fake.clock,
            "sleep": fake.sleep,
        }
        options.update(overrides)
        return download_into(big_source.url, bucket_storage.open("video.mp4"), **options)

    return fetch


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
    with pytest.raises(ValueError, match="not a local file"):
        _ = result.path


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
