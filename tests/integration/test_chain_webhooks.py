"""Per-chain webhooks end to end: real Redis, Celery worker, uvicorn, the fake gateway, and
webhook receivers on loopback ports (a thread each, ``http.server``).

The receivers are on 127.0.0.1, an internal address, so the service runs with
``ALLOW_PRIVATE_HOSTS=127.0.0.1`` (the gateway's file host too). Every delivery is checked
the way a subscriber checks it, with the ``standardwebhooks`` package.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import standardwebhooks

from tests.support import Service, fresh, start_chain, start_service, stop_service
from worker.outbound.notify import EventType, event_id, new_event
from worker.settings import Settings

NOTIFY_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
METADATA = {"order": "A-7731", "customer": {"id": 42, "name": "Zoë"}, "tags": ["rush"]}


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    event: dict[str, Any]  # as the subscriber's library verified and parsed it


@dataclass
class Receiver:
    """Keeps every delivery that verifies under NOTIFY_SECRET; counts and refuses the rest."""

    url: str = ""
    got: list[Delivery] = field(default_factory=list)
    forged: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def of(self, chain_id: str) -> list[Delivery]:
        """The deliveries about one chain: its own events and its videos'."""
        with self.lock:
            return [d for d in self.got if _chain_of(d.event) == chain_id]

    def wait(
        self, chain_id: str, done: Callable[[list[str]], bool], timeout: float = 30
    ) -> list[Delivery]:
        """The chain's deliveries once ``done`` holds for their types (sorted)."""
        deadline = time.monotonic() + timeout
        while not done(types(self.of(chain_id))):
            assert time.monotonic() < deadline, types(self.of(chain_id))
            time.sleep(0.05)
        return self.of(chain_id)


def _chain_of(event: dict[str, Any]) -> Any:
    data = event["data"]
    return data.get("chain_id") if event["type"].startswith("video.") else data.get("id")


def types(deliveries: list[Delivery]) -> list[str]:
    return sorted(d.event["type"] for d in deliveries)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, receiver: Receiver) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.receiver = receiver


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        receiver = self.server.receiver
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            event = standardwebhooks.Webhook(NOTIFY_SECRET).verify(body, headers)
        except standardwebhooks.WebhookVerificationError:
            with receiver.lock:
                receiver.forged += 1
            status = 401
        else:
            with receiver.lock:
                receiver.got.append(Delivery(self.path, headers, event))
            status = 204
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()


def serve(path: str) -> Iterator[Receiver]:
    receiver = Receiver()
    server = _Server(receiver)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}{path}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield receiver
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture(scope="module")
def ops() -> Iterator[Receiver]:
    """The operator's endpoint: NOTIFY_URL."""
    yield from serve("/ops")


@pytest.fixture(scope="module")
def hook() -> Iterator[Receiver]:
    """A caller's endpoint: the chains' own webhook_url (with a token in its query)."""
    yield from serve("/caller/hook")


@pytest.fixture(scope="module")
def svc(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, ops: Receiver
) -> Iterator[Service]:
    service = start_service(
        tmp_path_factory.mktemp("chain-webhooks"),
        redis_url,
        delay=0.3,
        poll_after_seconds="2",
        notify_url=ops.url,
        notify_secret=NOTIFY_SECRET,
        # The receivers and the gateway listen on loopback: let the worker reach that host.
        allow_private_hosts="127.0.0.1",
    )
    yield service
    stop_service(service)


def test_a_chains_events_reach_its_own_webhook_signed_filtered_and_with_its_metadata(
    svc: Service, ops: Receiver, hook: Receiver
) -> None:
    # Given a chain of two extensions with its own webhook, which wants two kinds of event
    fresh(svc)
    chain = start_chain(
        svc,
        steps=2,
        webhook_url=f"{hook.url}?token=caller-secret",
        webhook_events=["chain.step_succeeded", "chain.succeeded"],
        metadata=METADATA,
    )
    assert chain["metadata"] == METADATA
    # When it runs to its end
    final = svc.wait(chain["id"])
    assert final["status"] == "succeeded", final
    assert final["metadata"] == METADATA
    # Then NOTIFY_URL hears of everything: each step, each video archived, and the end
    every = ["chain.step_succeeded"] * 2 + ["chain.succeeded"] + ["video.archived"] * 2
    to_ops = ops.wait(chain["id"], lambda seen: seen == sorted(every))
    # and the chain's own webhook of what it asked for, on its own URL, query and all
    mine = ["chain.step_succeeded", "chain.step_succeeded", "chain.succeeded"]
    to_hook = hook.wait(chain["id"], lambda seen: seen == mine)
    assert {d.path for d in to_hook} == {"/caller/hook?token=caller-secret"}
    # every one signed (the receivers kept only what verified) and carrying the metadata
    assert hook.forged == ops.forged == 0
    assert all(d.event["data"]["metadata"] == METADATA for d in to_hook + to_ops)
    steps = sorted(d.event["data"]["step_index"] for d in to_hook if "step" in d.event["type"])
    assert steps == [0, 1]
    # the same event carries the same webhook-id at both destinations, a different one per event
    by_id = {d.headers["webhook-id"]: d for d in to_ops}
    assert len(by_id) == len(every)
    for d in to_hook:
        twin = by_id[d.headers["webhook-id"]]
        assert twin.event == d.event  # same type, timestamp and data
    # and nothing else arrives at the chain's webhook: each event's deliveries were queued
    # together, and NOTIFY_URL's are all in, so a stray one would be here within moments
    time.sleep(1.0)
    assert types(hook.of(chain["id"])) == mine


def test_a_chain_without_a_filter_hears_of_its_videos_and_of_its_cancel(
    svc: Service, hook: Receiver
) -> None:
    # Given a chain with its own webhook and no filter, whose first step is paid for
    fresh(svc)
    chain = start_chain(svc, steps=3, webhook_url=hook.url, metadata={"n": 1})
    hook.wait(chain["id"], lambda seen: "chain.step_succeeded" in seen)
    # When it is cancelled
    reply = svc.http.post(f"{svc.api}/chains/{chain['id']}/cancel", json={}, timeout=10)
    assert reply.status_code == 202, reply.text
    svc.wait(chain["id"], until=("cancelled",))
    # Then its webhook hears of the archived videos and of the cancel, with the metadata
    seen = hook.wait(chain["id"], lambda seen: "chain.cancelled" in seen)
    assert "video.archived" in types(seen)
    assert "video.at_risk" not in types(seen)
    assert all(d.event["data"]["metadata"] == {"n": 1} for d in seen)
    [end] = [d for d in seen if d.event["type"] == "chain.cancelled"]
    assert end.event["data"]["status"] == "cancelled"


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://10.0.0.1/", "10.0.0.1, a private address"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254, a link-local address"),
        ("http://[::1]:8080/", "::1, a loopback address"),
        ("ftp://hooks.example/", "http:// or https://"),
    ],
)
def test_a_webhook_url_on_an_internal_address_is_refused_at_the_edge(
    svc: Service, url: str, why: str
) -> None:
    before = svc.http.get(f"{svc.api}/chains?limit=100", timeout=10).json()["chains"]
    seed = svc.seed(5.0)
    body = {"video_id": seed["video_id"], "task_id": seed["task_id"], "steps": 1}
    reply = svc.post_chain({**body, "webhook_url": url})
    assert reply.status_code == 422, reply.text
    [detail] = reply.json()["details"]
    assert detail["field"] == "webhook_url"
    assert why in detail["message"]
    after = svc.http.get(f"{svc.api}/chains?limit=100", timeout=10).json()["chains"]
    assert len(after) == len(before)  # nothing stored, nothing paid for


def test_the_list_filters_by_status(svc: Service) -> None:
    fresh(svc)
    done = start_chain(svc, steps=1)
    svc.wait(done["id"])
    going = start_chain(svc, steps=1)
    svc.http.post(f"{svc.api}/chains/{going['id']}/cancel", json={}, timeout=10)
    svc.wait(going["id"], until=("cancelled",))

    def ids(status: str) -> list[str]:
        reply = svc.http.get(f"{svc.api}/chains?status={status}&limit=100", timeout=10)
        assert reply.status_code == 200, reply.text
        found = reply.json()["chains"]
        assert {c["status"] for c in found} <= {status}
        return [c["id"] for c in found]

    assert done["id"] in ids("succeeded")
    assert going["id"] not in ids("succeeded")
    assert going["id"] in ids("cancelled")
    assert done["id"] not in ids("cancelled")
    reply = svc.http.get(f"{svc.api}/chains?status=finished", timeout=10)
    assert reply.status_code == 422
    assert "queued, running, succeeded, failed, cancelled" in reply.json()["error"]


# -- with nothing internal allowed -------------------------------------------------------------


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Service]:
    """The web process alone, with ALLOW_PRIVATE_HOSTS naming nothing."""
    service = start_service(
        tmp_path_factory.mktemp("strict-webhooks"),
        redis_url,
        processes=("web",),
        notify_secret=NOTIFY_SECRET,
        allow_private_hosts="",
    )
    yield service
    stop_service(service)


@pytest.mark.parametrize(
    "url", ["http://localhost/", "http://127.0.0.1:8080/x", "http://10.0.0.1/"]
)
def test_loopback_and_private_webhook_urls_are_refused_when_not_allowed(
    strict: Service, url: str
) -> None:
    reply = strict.post_chain({"video_id": "v1", "task_id": "t1", "steps": 1, "webhook_url": url})
    assert reply.status_code == 422, reply.text
    [detail] = reply.json()["details"]
    assert detail["field"] == "webhook_url"
    assert "address; list it in ALLOW_PRIVATE_HOSTS to allow it" in detail["message"]
    assert strict.http.get(f"{strict.api}/chains", timeout=10).json()["chains"] == []


# -- the address is checked again when delivering ----------------------------------------------


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from serve("/late")


def deliver(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, url: str, **settings: Any) -> bool:
    """Run the worker's NOTIFY task for a chain's own ``url`` here, with these settings;
    whether it ended without an error (retries included)."""
    monkeypatch.setenv("CALLBACK_SECRET", "s" * 32)
    from worker import tasks  # here: the Celery app reads the settings when imported

    s = Settings(
        callback_secret="s" * 32,
        archive_dir=tmp_path,
        notify_secret=NOTIFY_SECRET,
        **settings,
    )
    monkeypatch.setattr(tasks, "get_settings", lambda: s)
    return bool(tasks.notify.apply(args=(an_event(), url)).successful())


def an_event() -> dict[str, Any]:
    data = {"id": "c1", "status": "succeeded", "metadata": METADATA}
    return new_event(EventType.CHAIN_SUCCEEDED, data, event_id=event_id("c1", "end")).to_dict()


def test_delivery_refuses_an_internal_address_not_allowed_any_more(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, receiver: Receiver
) -> None:
    # Given a chain's webhook on loopback, accepted while ALLOW_PRIVATE_HOSTS named it, and
    # a worker whose ALLOW_PRIVATE_HOSTS no longer does
    # When the event is delivered
    done = deliver(monkeypatch, tmp_path, receiver.url, allow_private_hosts="")
    # Then the receiver is never reached, and the task gives up (no retry could help)
    assert done
    assert receiver.got == []
    assert receiver.forged == 0


def test_delivery_reaches_an_allowed_internal_address_signed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, receiver: Receiver
) -> None:
    assert deliver(monkeypatch, tmp_path, receiver.url, allow_private_hosts="127.0.0.1")
    [got] = receiver.got
    assert got.event["data"]["metadata"] == METADATA
    assert got.headers["webhook-id"] == "evt_c1_end"
    assert (got.path, got.event["type"]) == ("/late", "chain.succeeded")
