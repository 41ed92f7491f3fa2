"""deliver() against a real HTTP receiver on a loopback port.

The receiver checks every request the way a subscriber would, with the ``standardwebhooks``
package, records what it got, and can be told to answer 500 for the next N requests, a fixed
status, or nothing at all (hang until the test ends).
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
import standardwebhooks

from worker.core.retry import POLICIES, Kind
from worker.outbound.netguard import AllowList
from worker.outbound.notify import (
    DeliveryFailed,
    DeliveryRejected,
    Event,
    EventType,
    deliver,
    event_id,
    new_event,
    verify,
)

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    verified: Any  # the body as the subscriber's library parsed it, or the error it raised


@dataclass
class Receiver:
    """The switches, and what the receiver saw. Counters count down as replies go out."""

    url: str = ""
    fail_next: int = 0  # answer the next N requests with 500
    status: int | None = None  # then answer every request with this status
    headers: dict[str, str] = field(default_factory=dict)  # sent with `status`
    hang: bool = False  # never answer (until the test ends)
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    release: threading.Event = field(default_factory=threading.Event)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, receiver: Receiver) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.receiver = receiver

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the client giving up on a hung request is part of the tests


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        receiver = self.server.receiver
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = dict(self.headers.items())
        try:
            verified = standardwebhooks.Webhook(SECRET).verify(body, headers)
        except standardwebhooks.WebhookVerificationError as exc:
            verified = exc
        with receiver.lock:
            receiver.received.append(Received(self.path, headers, body, verified))
            if receiver.fail_next > 0:
                receiver.fail_next -= 1
                status, extra = 500, {}
            elif receiver.status is not None:
                status, extra = receiver.status, receiver.headers
            elif isinstance(verified, Exception):
                status, extra = 401, {}
            else:
                status, extra = 204, {}
        if receiver.hang:
            receiver.release.wait(10)
            return
        self.send_response(status)
        for name, value in extra.items():
            self.send_header(name, value)
        self.send_header("content-length", "0")
        self.end_headers()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    server = _Server(receiver)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/kling"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield receiver
    receiver.release.set()
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def refused_url() -> Iterator[str]:
    """A loopback port that refuses connections: bound, never listening, so never reused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/hook"


def archived() -> Event:
    return new_event(
        EventType.VIDEO_ARCHIVED,
        {"chain_id": "c1", "video_id": "vid_bNd6X0", "path": "/srv/archive/vid_bNd6X0.mp4"},
        event_id=event_id("vid_bNd6X0", "archived"),
    )


def test_delivery_is_signed_so_a_standard_webhooks_receiver_accepts_it(
    receiver: Receiver,
) -> None:
    e = archived()

    status = deliver(receiver.url, SECRET, e)

    assert status == 204
    [got] = receiver.received
    assert got.path == "/hooks/kling"
    assert got.body == e.payload().encode()
    assert got.verified == json.loads(e.payload())
    headers = {k.lower(): v for k, v in got.headers.items()}
    assert headers["webhook-id"] == "evt_vid_bNd6X0_archived"
    assert abs(int(headers["webhook-timestamp"]) - datetime.now(UTC).timestamp()) < 60
    assert headers["webhook-signature"].startswith("v1,")
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"].startswith("kling-chain-notify/")
    assert verify(SECRET, got.body, got.headers) == got.verified


def test_non_ascii_data_arrives_intact(receiver: Receiver) -> None:
    e = new_event(EventType.CHAIN_FAILED, {"chain_id": "c1", "error": "échec ☕ 失败"})

    deliver(receiver.url, SECRET, e)

    [got] = receiver.received
    assert got.verified["data"]["error"] == "échec ☕ 失败"


def test_retries_send_the_same_id_and_body_each_signed_afresh(receiver: Receiver) -> None:
    # Given a receiver that fails twice
    receiver.fail_next = 2
    e = archived()
    outcomes: list[int | str] = []

    # When the event is delivered until it goes through (the Celery task waits in between)
    for _ in range(POLICIES[Kind.NOTIFY].max_attempts or 0):
        try:
            outcomes.append(deliver(receiver.url, SECRET, e))
            break
        except DeliveryFailed as exc:
            outcomes.append(str(exc))

    # Then the third attempt succeeds, and every attempt carried the same id and body
    assert outcomes == ["the receiver answered HTTP 500", "the receiver answered HTTP 500", 204]
    assert len(receiver.received) == 3
    assert {r.headers["webhook-id"] for r in receiver.received} == {e.id}
    assert {r.body for r in receiver.received} == {e.payload().encode()}
    assert all(r.verified == json.loads(e.payload()) for r in receiver.received)


def test_500_is_a_failure_to_retry(receiver: Receiver) -> None:
    receiver.fail_next = 1

    with pytest.raises(DeliveryFailed, match="500"):
        deliver(receiver.url, SECRET, archived())


def test_400_is_a_rejection(receiver: Receiver) -> None:
    receiver.status = 400

    with pytest.raises(DeliveryRejected, match="400"):
        deliver(receiver.url, SECRET, archived())


def test_a_receiver_with_another_secret_rejects_the_delivery(receiver: Receiver) -> None:
    other = "whsec_" + "A" * 32  # 24 zero bytes: valid, but not the receiver's secret

    with pytest.raises(DeliveryRejected, match="401"):
        deliver(receiver.url, other, archived())

    assert isinstance(receiver.received[0].verified, standardwebhooks.WebhookVerificationError)


def test_429_is_a_failure_that_carries_retry_after(receiver: Receiver) -> None:
    receiver.status = 429
    receiver.headers = {"retry-after": "30"}

    with pytest.raises(DeliveryFailed, match="429") as caught:
        deliver(receiver.url, SECRET, archived())

    assert caught.value.retry_after == 30.0


def test_redirects_are_not_followed(receiver: Receiver) -> None:
    receiver.status = 302
    receiver.headers = {"location": "/elsewhere"}

    with pytest.raises(DeliveryFailed, match="redirect"):
        deliver(receiver.url, SECRET, archived())

    assert [r.path for r in receiver.received] == ["/hooks/kling"]


def test_connection_refused_is_a_failure_to_retry(refused_url: str) -> None:
    with pytest.raises(DeliveryFailed, match="could not reach") as caught:
        deliver(refused_url, SECRET, archived())

    assert isinstance(caught.value.__cause__, requests.ConnectionError)


def test_a_receiver_that_never_answers_is_a_failure_to_retry(receiver: Receiver) -> None:
    receiver.hang = True

    with pytest.raises(DeliveryFailed, match=r"did not answer within 0\.3 s"):
        deliver(receiver.url, SECRET, archived(), timeout=0.3)

    assert len(receiver.received) == 1


def test_a_given_session_is_used_and_left_open(receiver: Receiver) -> None:
    with requests.Session() as session:
        session.headers["x-trace"] = "t1"

        assert deliver(receiver.url, SECRET, archived(), session=session) == 204
        assert deliver(receiver.url, SECRET, archived(), session=session) == 204

    assert [r.headers.get("x-trace") for r in receiver.received] == ["t1", "t1"]


# -- URLs that someone other than the operator supplied ---------------------------------------


def test_without_an_allow_list_the_operators_url_may_be_internal(receiver: Receiver) -> None:
    assert deliver(receiver.url, SECRET, archived()) == 204  # NOTIFY_URL: as before


def test_with_an_allow_list_an_internal_receiver_is_refused_unreached(
    receiver: Receiver,
) -> None:
    with pytest.raises(DeliveryRejected, match=r"127\.0\.0\.1, a loopback address") as caught:
        deliver(f"{receiver.url}?token=hidden", SECRET, archived(), allow=AllowList())

    assert "ALLOW_PRIVATE_HOSTS" in str(caught.value)
    assert "hidden" not in str(caught.value)
    assert receiver.received == []


def test_with_an_allow_list_naming_it_an_internal_receiver_is_reached(
    receiver: Receiver,
) -> None:
    allow = AllowList.parse("127.0.0.1")

    assert deliver(receiver.url, SECRET, archived(), allow=allow) == 204
    assert len(receiver.received) == 1


def test_allow_and_a_session_of_ones_own_do_not_mix(receiver: Receiver) -> None:
    with requests.Session() as session, pytest.raises(ValueError, match="guarded_session"):
        deliver(receiver.url, SECRET, archived(), session=session, allow=AllowList())

    assert receiver.received == []
