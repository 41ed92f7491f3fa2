"""The HTTP client against a tiny loopback server, and its pure decision functions."""

from __future__ import annotations

import json
import logging
import socket
import ssl
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from http.client import IncompleteRead, RemoteDisconnected
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import urllib3
import urllib3.exceptions

from kling.auth import BearerKey, JwtAuth
from kling.client import (
    USER_AGENT,
    KlingClient,
    classify_transport_error,
    pool_for,
    reply_payload,
)
from kling.errors import (
    AccountError,
    AmbiguousCreate,
    AuthError,
    InvalidRequest,
    KlingError,
    MalformedReply,
    NotFound,
    PermanentError,
    RetryableError,
)
from kling.models import ExtendRequest, TaskKind, TaskStatus, Text2VideoRequest

FAST = (1.0, 2.0)  # connect, read: nothing here should take longer

# --- a scripted loopback server ------------------------------------------------------


@dataclass
class Received:
    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


Reply = Callable[["Handler"], None]


class Handler(BaseHTTPRequestHandler):
    server: LoopbackServer

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        owner = self.server
        owner.received.append(Received(self.command, self.path, dict(self.headers), body))
        reply = owner.replies.popleft() if owner.replies else json_reply(500, {"code": 5000})
        reply(self)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class LoopbackServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.received: list[Received] = []
        self.replies: deque[Reply] = deque()
        self.release = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def script(self, *replies: Reply) -> None:
        self.replies.extend(replies)


def json_reply(status: int, body: Any, headers: Mapping[str, str] | None = None) -> Reply:
    return raw_reply(status, json.dumps(body).encode(), "application/json", headers)


def raw_reply(
    status: int,
    body: bytes,
    content_type: str = "text/html",
    headers: Mapping[str, str] | None = None,
) -> Reply:
    def reply(handler: Handler) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(body)

    return reply


def hang_up(handler: Handler) -> None:
    """Read the request, then close the socket without a word."""
    handler.close_connection = True


def truncated(handler: Handler) -> None:
    """Promise 1000 bytes, send a few, close."""
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", "1000")
    handler.end_headers()
    handler.wfile.write(b'{"code": 0, "data": {"task_')
    handler.wfile.flush()
    handler.close_connection = True


def stall(handler: Handler) -> None:
    """Say nothing until the test ends (the client's read timeout fires first)."""
    handler.server.release.wait(10)
    handler.close_connection = True


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    httpd = LoopbackServer()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield httpd
    finally:
        httpd.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture
def client(server: LoopbackServer) -> Iterator[KlingClient]:
    kling = KlingClient(server.url + "/kling", BearerKey("sk-gateway"), timeout=FAST)
    yield kling
    kling.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def ok(data: Mapping[str, Any]) -> Reply:
    return json_reply(200, {"code": 0, "message": "SUCCEED", "request_id": "req-1", "data": data})


SUBMITTED = {"task_id": "task-2", "task_status": "submitted", "created_at": 1, "updated_at": 1}
SUCCEEDED = {
    "task_id": "task-2",
    "task_status": "succeed",
    "task_info": {"external_task_id": "chain-1-step-2"},
    "task_result": {"videos": [{"id": "vid-2", "url": "https://cdn/2.mp4", "duration": "10.1"}]},
}
EXTEND = ExtendRequest(
    video_id="vid-1",
    task_id="task-1",
    prompt="keep going",
    callback_url="https://hooks.example/cb/secret-callback-token",
    external_task_id="chain-1-step-2",
)


class CountingAuth:
    def __init__(self) -> None:
        self.generation = 0

    def header(self) -> str:
        return f"Bearer token-{self.generation}"

    def refresh(self) -> None:
        self.generation += 1


# --- request building ----------------------------------------------------------------


def test_create_extend_posts_json_with_headers(server: LoopbackServer, client: KlingClient) -> None:
    server.script(ok(SUBMITTED))

    task = client.create(TaskKind.VIDEO_EXTEND, EXTEND)

    assert task.task_id == "task-2"
    assert task.status is TaskStatus.SUBMITTED
    [sent] = server.received
    assert (sent.method, sent.path) == ("POST", "/kling/v1/videos/video-extend")
    assert sent.json() == {
        "video_id": "vid-1",
        "task_id": "task-1",
        "prompt": "keep going",
        "callback_url": "https://hooks.example/cb/secret-callback-token",
        "external_task_id": "chain-1-step-2",
    }
    assert sent.headers["Authorization"] == "Bearer sk-gateway"
    assert sent.headers["User-Agent"] == USER_AGENT
    assert USER_AGENT.startswith("kling-chain/")
    assert sent.headers["Content-Type"] == "application/json"


def test_official_api_mode_leaves_out_the_parent_task_id(server: LoopbackServer) -> None:
    server.script(ok(SUBMITTED))
    with KlingClient(server.url, BearerKey("k"), send_parent_task_id=False, timeout=FAST) as kling:
        kling.create(TaskKind.VIDEO_EXTEND, ExtendRequest(video_id="vid-1", task_id="task-1"))

    assert server.received[0].json() == {"video_id": "vid-1"}


def test_create_text2video_sends_duration_as_string(
    server: LoopbackServer, client: KlingClient
) -> None:
    server.script(ok(SUBMITTED))

    client.create(TaskKind.TEXT2VIDEO, Text2VideoRequest(prompt="a fox", duration=10))

    [sent] = server.received
    assert sent.path == "/kling/v1/videos/text2video"
    assert sent.json() == {"prompt": "a fox", "duration": "10"}


@pytest.mark.parametrize(
    ("suffix", "expected_path"),
    [
        ("", "/v1/videos/video-extend/task-2"),
        ("/", "/v1/videos/video-extend/task-2"),
        ("/kling", "/kling/v1/videos/video-extend/task-2"),
        ("/kling/", "/kling/v1/videos/video-extend/task-2"),
        ("/api/kling//", "/api/kling/v1/videos/video-extend/task-2"),
    ],
)
def test_url_joining(server: LoopbackServer, suffix: str, expected_path: str) -> None:
    server.script(ok(SUCCEEDED))
    with KlingClient(server.url + suffix, BearerKey("k"), timeout=FAST) as kling:
        task = kling.get(TaskKind.VIDEO_EXTEND, "task-2")

    assert server.received[0].path == expected_path
    assert server.received[0].method == "GET"
    assert task.video is not None
    assert task.video.duration == 10.1


def test_task_ids_are_quoted_in_the_path(server: LoopbackServer, client: KlingClient) -> None:
    server.script(ok(SUCCEEDED), ok(SUCCEEDED))

    client.get(TaskKind.TEXT2VIDEO, "a/b c?d")
    client.get(TaskKind.TEXT2VIDEO, "plain")

    assert [r.path for r in server.received] == [
        "/kling/v1/videos/text2video/a%2Fb%20c%3Fd",
        "/kling/v1/videos/text2video/plain",
    ]


def test_find_by_external_id(server: LoopbackServer, client: KlingClient) -> None:
    server.script(
        ok(SUCCEEDED),
        json_reply(404, {"code": 1203, "message": "task not found", "request_id": "r"}),
        raw_reply(404, b"<html>not found</html>"),
    )

    found = client.find_by_external_id(TaskKind.VIDEO_EXTEND, "chain-1-step-2")
    missing = client.find_by_external_id(TaskKind.VIDEO_EXTEND, "chain-1-step-3")
    missing_too = client.find_by_external_id(TaskKind.VIDEO_EXTEND, "chain-1-step-4")

    assert found is not None
    assert found.external_task_id == "chain-1-step-2"
    assert missing is None
    assert missing_too is None
    assert server.received[0].path == "/kling/v1/videos/video-extend/chain-1-step-2"


def test_every_request_carries_the_timeout() -> None:
    seen: list[Any] = []

    class Recorder(urllib3.PoolManager):
        def urlopen(  # type: ignore[override]
            self, method: str, url: str, redirect: bool = True, **kw: Any
        ) -> urllib3.HTTPResponse:
            seen.append((kw["timeout"].connect_timeout, kw["timeout"].read_timeout, redirect))
            body = json.dumps({"code": 0, "data": SUBMITTED}).encode()
            return urllib3.HTTPResponse(body=body, status=200, preload_content=True)

    kling = KlingClient("https://gw.example", BearerKey("k"), timeout=(3, 7), http=Recorder())

    kling.create(TaskKind.VIDEO_EXTEND, ExtendRequest(video_id="v"))
    kling.get(TaskKind.VIDEO_EXTEND, "task-2")
    kling.find_by_external_id(TaskKind.VIDEO_EXTEND, "x")

    assert seen == [(3.0, 7.0, False)] * 3


def test_close_leaves_a_borrowed_pool_open() -> None:
    class Pool(urllib3.PoolManager):
        cleared = 0

        def clear(self) -> None:
            self.cleared += 1
            super().clear()

    borrowed, owned = Pool(), KlingClient("https://gw.example", BearerKey("k"))
    KlingClient("https://gw.example", BearerKey("k"), http=borrowed).close()
    assert borrowed.cleared == 0
    owned.close()


def test_the_pool_takes_proxy_and_ca_bundle_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("")
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    pool = pool_for("https://gw.example")
    assert isinstance(pool, urllib3.ProxyManager)
    assert pool.proxy is not None
    assert pool.proxy.host == "proxy.example"
    assert pool.connection_pool_kw["ca_certs"] == str(bundle)
    # NO_PROXY names the host: straight there, with the default bundle when none is set
    monkeypatch.setenv("NO_PROXY", "gw.example")
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    direct = pool_for("https://gw.example")
    assert not isinstance(direct, urllib3.ProxyManager)
    assert direct.connection_pool_kw["cert_reqs"] == "CERT_REQUIRED"
    assert Path(direct.connection_pool_kw["ca_certs"]).is_file()


@pytest.mark.parametrize(
    ("base_url", "timeout"),
    [
        ("gw.example/kling", FAST),
        ("ftp://gw.example", FAST),
        ("https://gw.example?x=1", FAST),
        ("https://gw.example", (0, 5)),
        ("https://gw.example", (5,)),
    ],
)
def test_bad_client_settings(base_url: str, timeout: Any) -> None:
    with pytest.raises(InvalidRequest):
        KlingClient(base_url, BearerKey("k"), timeout=timeout)


# --- validation sends nothing --------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "request_", "message"),
    [
        (TaskKind.VIDEO_EXTEND, ExtendRequest(video_id=""), "video_id must not be empty"),
        (
            TaskKind.VIDEO_EXTEND,
            ExtendRequest(video_id="v", prompt="x" * 2501),
            "prompt is 2501 characters; the limit is 2500",
        ),
        (
            TaskKind.VIDEO_EXTEND,
            ExtendRequest(video_id="v", cfg_scale=float("nan")),
            "cfg_scale must be between 0 and 1, got nan",
        ),
        (
            TaskKind.TEXT2VIDEO,
            ExtendRequest(video_id="v"),
            "a text2video task needs a Text2VideoRequest, got ExtendRequest",
        ),
        (
            TaskKind.IMAGE2VIDEO,
            Text2VideoRequest(prompt="p"),
            "creating image2video tasks is not supported",
        ),
    ],
)
def test_invalid_requests_are_not_sent(
    server: LoopbackServer,
    client: KlingClient,
    kind: TaskKind,
    request_: ExtendRequest | Text2VideoRequest,
    message: str,
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        client.create(kind, request_)

    assert caught.value.message == message
    assert server.received == []


@pytest.mark.parametrize("task_id", ["", "  "])
def test_empty_task_id_is_not_sent(
    server: LoopbackServer, client: KlingClient, task_id: str
) -> None:
    with pytest.raises(InvalidRequest, match="task_id must be a non-empty string"):
        client.get(TaskKind.VIDEO_EXTEND, task_id)

    assert server.received == []


# --- provider errors -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (429, {"code": 1102, "message": "resource pack exhausted"}, AccountError),
        (429, {"code": 1303, "message": "too many tasks"}, RetryableError),
        (500, {"code": 5000, "message": "internal"}, RetryableError),
        (400, {"code": 1301, "message": "content safety"}, PermanentError),
        (200, {"code": 1201, "message": "bad params"}, PermanentError),
    ],
)
def test_provider_errors_are_raised_without_retrying(
    server: LoopbackServer,
    client: KlingClient,
    status: int,
    body: dict[str, Any],
    expected: type[KlingError],
) -> None:
    server.script(json_reply(status, {**body, "request_id": "req-7"}))

    with pytest.raises(expected) as caught:
        client.get(TaskKind.VIDEO_EXTEND, "task-2")

    assert type(caught.value) is expected
    assert (caught.value.code, caught.value.http_status) == (body["code"], status)
    assert caught.value.message == body["message"]
    assert caught.value.request_id == "req-7"
    assert len(server.received) == 1


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (raw_reply(502, b"<html>Bad Gateway</html>"), RetryableError),
        (raw_reply(429, b"slow down"), RetryableError),
        (raw_reply(404, b"no such route"), NotFound),
        (raw_reply(400, b"bad"), PermanentError),
        (raw_reply(200, b"<html>welcome</html>"), MalformedReply),
        (json_reply(200, ["not", "an", "object"]), MalformedReply),
        (json_reply(200, {"code": 0, "data": {"task_status": "succeed"}}), MalformedReply),
        (raw_reply(302, b"", headers={"Location": "https://elsewhere/"}), PermanentError),
    ],
)
def test_odd_replies_to_a_query(
    server: LoopbackServer, client: KlingClient, reply: Reply, expected: type[KlingError]
) -> None:
    server.script(reply)

    with pytest.raises(expected) as caught:
        client.get(TaskKind.VIDEO_EXTEND, "task-2")

    assert type(caught.value) is expected
    assert len(server.received) == 1


@pytest.mark.parametrize(
    "reply",
    [
        raw_reply(200, b"<html>welcome</html>"),
        json_reply(200, {"code": 0, "data": {"task_id": "t"}}),  # no task_status
    ],
)
def test_unreadable_answer_to_a_create_is_ambiguous(
    server: LoopbackServer, client: KlingClient, reply: Reply
) -> None:
    server.script(reply)

    with pytest.raises(AmbiguousCreate, match="the task probably exists"):
        client.create(TaskKind.VIDEO_EXTEND, EXTEND)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        # A proxy or gateway answered for the provider: the create may have gone on.
        (raw_reply(502, b"<html>Bad Gateway</html>"), AmbiguousCreate),
        (raw_reply(504, b"<html>Gateway Timeout</html>"), AmbiguousCreate),
        (json_reply(504, {"code": 5002, "message": "server timeout"}), AmbiguousCreate),
        (json_reply(200, {"code": 5002, "message": "backlog"}), AmbiguousCreate),
        # The provider refused before doing anything: a plain retry.
        (raw_reply(503, b"maintenance"), RetryableError),
        (json_reply(503, {"code": 5001, "message": "unavailable"}), RetryableError),
        (json_reply(429, {"code": 1303, "message": "parallel task over limit"}), RetryableError),
        (json_reply(500, {"code": 5000, "message": "internal"}), RetryableError),
    ],
)
def test_a_create_answered_by_a_timeout_or_a_gateway_error_may_have_been_billed(
    server: LoopbackServer, client: KlingClient, reply: Reply, expected: type[KlingError]
) -> None:
    server.script(reply)

    with pytest.raises(KlingError) as caught:
        client.create(TaskKind.VIDEO_EXTEND, EXTEND)

    assert type(caught.value) is expected
    assert len(server.received) == 1


def test_the_same_replies_to_a_query_are_plain_retries(
    server: LoopbackServer, client: KlingClient
) -> None:
    server.script(raw_reply(502, b"bad gateway"), json_reply(504, {"code": 5002, "message": "t"}))

    for _ in range(2):
        with pytest.raises(RetryableError) as caught:
            client.get(TaskKind.VIDEO_EXTEND, "task-2")
        assert type(caught.value) is RetryableError


def test_list_tasks_reads_a_page_newest_first(server: LoopbackServer, client: KlingClient) -> None:
    server.script(json_reply(200, {"code": 0, "data": [SUCCEEDED, SUBMITTED]}))

    tasks = client.list_tasks(TaskKind.VIDEO_EXTEND, page=2, page_size=50)

    assert [t.status for t in tasks] == [TaskStatus.SUCCEED, TaskStatus.SUBMITTED]
    assert server.received[0].path == "/kling/v1/videos/video-extend?pageNum=2&pageSize=50"


@pytest.mark.parametrize(
    "body",
    [{"code": 0, "data": {"task_id": "t"}}, {"code": 0, "data": [1]}, {"code": 0}],
)
def test_an_unreadable_list_page_is_malformed(
    server: LoopbackServer, client: KlingClient, body: dict[str, Any]
) -> None:
    server.script(json_reply(200, body))

    with pytest.raises(MalformedReply):
        client.list_tasks(TaskKind.VIDEO_EXTEND)


def test_redirects_are_not_followed(server: LoopbackServer, client: KlingClient) -> None:
    server.script(raw_reply(301, b"", headers={"Location": "https://gw.example/kling/v1/x"}))

    with pytest.raises(PermanentError, match=r"redirected to https://gw\.example/kling/v1/x"):
        client.create(TaskKind.VIDEO_EXTEND, EXTEND)

    assert len(server.received) == 1


# --- re-authentication ---------------------------------------------------------------


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1004])
def test_auth_failure_refreshes_and_retries_once(server: LoopbackServer, code: int) -> None:
    auth = CountingAuth()
    server.script(json_reply(401, {"code": code, "message": "expired"}), ok(SUBMITTED))

    with KlingClient(server.url, auth, timeout=FAST) as kling:
        task = kling.create(TaskKind.VIDEO_EXTEND, EXTEND)

    assert task.task_id == "task-2"
    assert auth.generation == 1
    assert [r.headers["Authorization"] for r in server.received] == [
        "Bearer token-0",
        "Bearer token-1",
    ]
    assert server.received[0].body == server.received[1].body


def test_second_auth_failure_raises(server: LoopbackServer) -> None:
    auth = CountingAuth()
    server.script(
        json_reply(401, {"code": 1004, "message": "expired"}),
        json_reply(401, {"code": 1002, "message": "invalid", "request_id": "r2"}),
        ok(SUBMITTED),
    )

    with KlingClient(server.url, auth, timeout=FAST) as kling, pytest.raises(AuthError) as caught:
        kling.get(TaskKind.VIDEO_EXTEND, "task-2")

    assert caught.value.code == 1002
    assert caught.value.request_id == "r2"
    assert auth.generation == 1
    assert len(server.received) == 2


def test_jwt_is_re_minted_after_an_auth_failure(server: LoopbackServer) -> None:
    ticks = iter(range(1_000_000, 1_000_100))
    auth = JwtAuth("ak-0123", "sk-0123456789abcdef0123456789abcdef", clock=lambda: next(ticks))
    server.script(json_reply(401, {"code": 1004, "message": "expired"}), ok(SUCCEEDED))

    with KlingClient(server.url, auth, timeout=FAST) as kling:
        kling.get(TaskKind.VIDEO_EXTEND, "task-2")

    first, second = (r.headers["Authorization"] for r in server.received)
    assert first.startswith("Bearer ey")
    assert second.startswith("Bearer ey")
    assert first != second


# --- connection failures -------------------------------------------------------------


@pytest.mark.parametrize("behaviour", [hang_up, truncated])
def test_broken_reply_to_a_create_is_ambiguous(
    server: LoopbackServer, client: KlingClient, behaviour: Reply
) -> None:
    server.script(behaviour)

    with pytest.raises(AmbiguousCreate, match="may have reached the provider"):
        client.create(TaskKind.VIDEO_EXTEND, EXTEND)

    assert len(server.received) == 1


@pytest.mark.parametrize("behaviour", [hang_up, truncated])
def test_broken_reply_to_a_query_is_retryable(
    server: LoopbackServer, client: KlingClient, behaviour: Reply
) -> None:
    server.script(behaviour)

    with pytest.raises(RetryableError):
        client.get(TaskKind.VIDEO_EXTEND, "task-2")


def test_read_timeout(server: LoopbackServer) -> None:
    server.script(stall, stall)
    with KlingClient(server.url, BearerKey("k"), timeout=(1.0, 0.2)) as kling:
        with pytest.raises(AmbiguousCreate, match="read timeout"):
            kling.create(TaskKind.VIDEO_EXTEND, EXTEND)
        with pytest.raises(RetryableError):
            kling.get(TaskKind.VIDEO_EXTEND, "task-2")


def test_nothing_listening_is_retryable_even_for_a_create() -> None:
    with KlingClient(f"http://127.0.0.1:{free_port()}", BearerKey("k"), timeout=FAST) as kling:
        with pytest.raises(RetryableError, match="could not connect"):
            kling.create(TaskKind.VIDEO_EXTEND, EXTEND)
        with pytest.raises(RetryableError, match="could not connect"):
            kling.get(TaskKind.VIDEO_EXTEND, "task-2")


# --- logging -------------------------------------------------------------------------


def test_requests_are_logged_without_secrets(
    server: LoopbackServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.script(json_reply(401, {"code": 1004}), ok(SUBMITTED), json_reply(429, {"code": 1303}))
    caplog.set_level(logging.DEBUG, logger="kling")

    with KlingClient(server.url, BearerKey("sk-very-secret"), timeout=FAST) as kling:
        kling.create(TaskKind.VIDEO_EXTEND, EXTEND)
        with pytest.raises(RetryableError):
            kling.get(TaskKind.VIDEO_EXTEND, "task-2")

    text = caplog.text
    assert "POST " + server.url + "/v1/videos/video-extend" in text
    assert "request_id req-1" in text
    assert "RetryableError" in text
    assert "sk-very-secret" not in text
    assert "secret-callback-token" not in text
    assert "keep going" not in text


# --- pure: transport failures --------------------------------------------------------

URL = "https://gw.example/kling/v1/videos/video-extend"


def max_retry(reason: Exception) -> urllib3.exceptions.MaxRetryError:
    return urllib3.exceptions.MaxRetryError(None, URL, reason)  # type: ignore[arg-type]


def refused() -> Exception:
    error = urllib3.exceptions.NewConnectionError(None, "[Errno 111] Connection refused")  # type: ignore[arg-type]
    return requests.exceptions.ConnectionError(max_retry(error))


def dns_failure() -> Exception:
    reason = socket.gaierror(-2, "Name or service not known")
    error = urllib3.exceptions.NameResolutionError("gw.example", None, reason)  # type: ignore[arg-type]
    return requests.exceptions.ConnectionError(max_retry(error))


def connect_timeout() -> Exception:
    error = urllib3.exceptions.ConnectTimeoutError(None, "connect timed out")
    return requests.exceptions.ConnectTimeout(max_retry(error))


def bad_certificate() -> Exception:
    cause = ssl.SSLCertVerificationError(1, "certificate verify failed")
    return requests.exceptions.SSLError(max_retry(urllib3.exceptions.SSLError(cause)))


def proxy_unreachable() -> Exception:
    inner = urllib3.exceptions.NewConnectionError(None, "refused")  # type: ignore[arg-type]
    error = urllib3.exceptions.ProxyError("Unable to connect to proxy", inner)
    return requests.exceptions.ProxyError(max_retry(error))


def read_timeout() -> Exception:
    error = urllib3.exceptions.ReadTimeoutError(None, URL, "Read timed out.")  # type: ignore[arg-type]
    return requests.exceptions.ReadTimeout(error)


def aborted() -> Exception:
    cause = RemoteDisconnected("Remote end closed connection without response")
    return requests.exceptions.ConnectionError(
        urllib3.exceptions.ProtocolError("Connection aborted.", cause)
    )


def reset() -> Exception:
    cause = ConnectionResetError(104, "Connection reset by peer")
    return requests.exceptions.ConnectionError(
        urllib3.exceptions.ProtocolError("Connection aborted.", cause)
    )


def incomplete_body() -> Exception:
    cause = urllib3.exceptions.ProtocolError("Connection broken", IncompleteRead(b"x", 999))
    return requests.exceptions.ChunkedEncodingError(cause)


def bad_gzip() -> Exception:
    return requests.exceptions.ContentDecodingError("Received response with content-encoding")


def ssl_mid_stream() -> Exception:
    return requests.exceptions.SSLError(max_retry(urllib3.exceptions.SSLError("bad record mac")))


@pytest.mark.parametrize(
    ("make", "on_create", "on_query"),
    [
        (refused, RetryableError, RetryableError),
        (dns_failure, RetryableError, RetryableError),
        (connect_timeout, RetryableError, RetryableError),
        (bad_certificate, RetryableError, RetryableError),
        (proxy_unreachable, RetryableError, RetryableError),
        (read_timeout, AmbiguousCreate, RetryableError),
        (aborted, AmbiguousCreate, RetryableError),
        (reset, AmbiguousCreate, RetryableError),
        (incomplete_body, AmbiguousCreate, RetryableError),
        (bad_gzip, AmbiguousCreate, RetryableError),
        (ssl_mid_stream, AmbiguousCreate, RetryableError),
        (lambda: requests.exceptions.Timeout("?"), AmbiguousCreate, RetryableError),
        (lambda: OSError("?"), AmbiguousCreate, RetryableError),
        (lambda: requests.exceptions.InvalidURL("bad"), PermanentError, PermanentError),
        (lambda: requests.exceptions.MissingSchema("bad"), PermanentError, PermanentError),
        # What urllib3, which the client sends with, raises itself (retries=False)
        (lambda: refused().args[0].reason, RetryableError, RetryableError),
        (lambda: urllib3.exceptions.ConnectTimeoutError(None, "x"), RetryableError, RetryableError),
        (
            lambda: urllib3.exceptions.ReadTimeoutError(None, "/", "read timed out"),  # type: ignore[arg-type]
            AmbiguousCreate,
            RetryableError,
        ),
        (lambda: aborted().args[0], AmbiguousCreate, RetryableError),
        (lambda: reset().args[0], AmbiguousCreate, RetryableError),
        (lambda: incomplete_body().args[0], AmbiguousCreate, RetryableError),
        (lambda: urllib3.exceptions.DecodeError("bad gzip"), AmbiguousCreate, RetryableError),
        (lambda: urllib3.exceptions.SSLError("bad record mac"), AmbiguousCreate, RetryableError),
        (lambda: urllib3.exceptions.LocationParseError("x"), PermanentError, PermanentError),
    ],
)
def test_classify_transport_error(
    make: Callable[[], Exception],
    on_create: type[KlingError],
    on_query: type[KlingError],
) -> None:
    assert type(classify_transport_error(make(), create=True)) is on_create
    assert type(classify_transport_error(make(), create=False)) is on_query


# --- pure: replies -------------------------------------------------------------------


def test_reply_payload_returns_the_object() -> None:
    body = {"code": 0, "message": "SUCCEED", "data": {"task_id": "t"}}

    assert reply_payload(200, json.dumps(body).encode()) == body


def test_reply_payload_accepts_a_bare_object() -> None:
    assert reply_payload(200, b'{"task_id": "t", "task_status": "submitted"}')["task_id"] == "t"


@pytest.mark.parametrize(
    ("status", "content", "expected", "fragment"),
    [
        (429, b'{"code": 1102, "message": "pack used up"}', AccountError, "pack used up"),
        (429, b'{"code": "1302", "message": "slow"}', RetryableError, "slow"),
        (500, b'{"code": 0, "message": "oops"}', RetryableError, "oops"),
        (503, b'{"message": "maintenance"}', RetryableError, "maintenance"),
        (503, b"", RetryableError, "HTTP 503 with a non-JSON reply: (empty body)"),
        (404, b'{"code": 1202}', NotFound, "not found"),
        (401, b'{"detail": "bad key"}', AuthError, "credentials"),
        (400, b'{"code": "x", "message": "bad"}', PermanentError, "bad"),
        (200, b'{"code": "x"}', MalformedReply, "envelope code must be an integer, got 'x'"),
        (200, b"\xff\xfe", MalformedReply, "not a JSON object"),
        (200, b"null", MalformedReply, "not a JSON object: null"),
        (200, b"x" * 500, MalformedReply, "x" * 200 + "..."),
        (307, b"", PermanentError, "redirected; set the base URL"),
    ],
)
def test_reply_payload_errors(
    status: int, content: bytes, expected: type[KlingError], fragment: str
) -> None:
    with pytest.raises(expected) as caught:
        reply_payload(status, content)

    assert type(caught.value) is expected
    assert fragment in caught.value.message
    assert caught.value.http_status == status
