"""The fake Kling gateway as a user runs it: ``python -m kling.fake`` in a subprocess.

One gateway process serves the whole module (reset before each test); callbacks arrive at
a small HTTP server the tests run on a loopback port.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import httpx
import jwt
import pytest

from kling.fake import extension_seconds, video_bytes, video_sha256, video_size

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "k"
ACCESS_KEY = "ak-integration"
SECRET_KEY = "sk-integration-secret-long-enough-for-hs256"
DELAY = 0.3
READY = "fake Kling gateway listening on"
# What a client sees when the server breaks the connection (not a timeout).
BROKEN = (httpx.RemoteProtocolError, httpx.ReadError)
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(probe: Callable[[], T | None], what: str, timeout: float = 10.0) -> T:
    """Poll ``probe`` until it returns something truthy, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KLING_")}
    env["PYTHONPATH"] = str(ROOT)
    return env


@dataclass
class Gateway:
    url: str
    log: Path
    client: httpx.Client

    def admin(self, path: str, body: dict[str, Any] | None = None) -> Any:
        reply = self.client.get(path) if body is None else self.client.post(path, json=body)
        assert reply.status_code < 300, reply.text
        return reply.json()

    def seed(self, duration: float = 5.0) -> dict[str, Any]:
        return self.admin("/_fake/videos", {"duration": duration})  # type: ignore[no-any-return]

    def stats(self) -> dict[str, Any]:
        return self.admin("/_fake/stats")  # type: ignore[no-any-return]

    def faults(self, patch: dict[str, Any]) -> None:
        self.admin("/_fake/faults", patch)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    port = free_port()
    log = tmp_path_factory.mktemp("fake-gateway") / "gateway.log"
    command = [
        sys.executable, "-m", "kling.fake", "--port", str(port), "--delay", str(DELAY),
        "--api-key", API_KEY, "--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY,
        "--seed-video", "5", "--seed-video", "7.5",
        "--video-format", "random",  # these tests check the random bytes (video_bytes)
    ]  # fmt: skip
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command, cwd=ROOT, env=clean_env(), stdout=sink, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=url, timeout=10.0)
    try:

        def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"gateway exited early:\n{log.read_text()}")
            try:
                return READY in log.read_text() and client.get("/_fake/health").is_success
            except httpx.TransportError:
                return False

        wait_until(ready, "the gateway to answer", timeout=20.0)
        assert f"{READY} {url} (delay {DELAY} s)" in log.read_text()
        yield Gateway(url, log, client)
    finally:
        client.close()
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(autouse=True)
def _fresh(gateway: Gateway) -> None:
    gateway.admin("/_fake/reset", {})


@dataclass
class Receiver:
    """Collects the JSON bodies POSTed to it, by path."""

    url: str
    received: dict[str, list[Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def endpoint(self) -> str:
        return f"{self.url}/cb/{uuid.uuid4().hex}"

    def bodies(self, endpoint: str) -> list[Any]:
        path = endpoint.removeprefix(self.url)
        with self.lock:
            return list(self.received.get(path, []))

    def wait_for(self, endpoint: str, count: int) -> list[Any]:
        def enough() -> list[Any] | None:
            bodies = self.bodies(endpoint)
            return bodies if len(bodies) >= count else None

        return wait_until(enough, f"{count} callbacks at {endpoint}")


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    port = free_port()
    box = Receiver(f"http://127.0.0.1:{port}")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with box.lock:
                box.received.setdefault(self.path, []).append(body)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield box
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def bearer(token: str = API_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def mint(*, secret: str = SECRET_KEY, nbf_in: float = -5, exp_in: float = 1800) -> str:
    now = time.time()
    claims = {"iss": ACCESS_KEY, "nbf": int(now + nbf_in), "exp": int(now + exp_in)}
    return jwt.encode(claims, secret, algorithm="HS256", headers={"typ": "JWT"})


def create(
    gateway: Gateway, kind: str, body: dict[str, Any], *, prefix: str = "", token: str = API_KEY
) -> httpx.Response:
    return gateway.client.post(f"{prefix}/v1/videos/{kind}", json=body, headers=bearer(token))


def created(gateway: Gateway, kind: str, body: dict[str, Any], **kw: Any) -> dict[str, Any]:
    reply = create(gateway, kind, body, **kw)
    assert reply.status_code == 200, reply.text
    envelope = reply.json()
    assert (envelope["code"], envelope["message"]) == (0, "SUCCEED")
    return envelope["data"]  # type: ignore[no-any-return]


def query(gateway: Gateway, kind: str, key: str, *, prefix: str = "") -> dict[str, Any]:
    reply = gateway.client.get(f"{prefix}/v1/videos/{kind}/{key}", headers=bearer())
    assert reply.status_code == 200, reply.text
    return reply.json()["data"]  # type: ignore[no-any-return]


def finished(gateway: Gateway, kind: str, task_id: str) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        data = query(gateway, kind, task_id)
        return data if data["task_status"] in ("succeed", "failed") else None

    return wait_until(ended, f"task {task_id} to end")


def error_of(reply: httpx.Response) -> tuple[int, int]:
    body = reply.json()
    assert body["data"] is None
    return reply.status_code, body["code"]


# -- the API ----------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "/kling"])
def test_extend_and_query_with_the_static_key(gateway: Gateway, prefix: str) -> None:
    # Given a 5 s video made by a task
    parent = gateway.seed(5.0)
    # When it is extended
    data = created(gateway, "video-extend", {"video_id": parent["video_id"]}, prefix=prefix)
    assert data["task_status"] == "submitted"
    assert isinstance(data["created_at"], int)
    # Then the task ends with the whole, longer video
    done = finished(gateway, "video-extend", data["task_id"])
    assert done["task_status"] == "succeed"
    [video] = done["task_result"]["videos"]
    assert video["duration"] == f"{5.0 + extension_seconds(data['task_id']):.1f}"
    assert video["url"] == f"{gateway.url}/files/{video['id']}.mp4"
    assert done["task_info"]["parent_video"]["id"] == parent["video_id"]
    assert done["updated_at"] >= done["created_at"] + DELAY * 1000 - 1
    assert query(gateway, "video-extend", data["task_id"], prefix="/kling") == done
    listing = gateway.client.get(
        f"{prefix}/v1/videos/video-extend", params={"pageNum": 1, "pageSize": 30}, headers=bearer()
    )
    assert [t["task_id"] for t in listing.json()["data"]] == [data["task_id"]]


def test_text2video_and_image2video_and_external_ids(gateway: Gateway) -> None:
    text = created(gateway, "text2video", {"prompt": "a cat", "duration": "10"})
    image = created(
        gateway, "image2video", {"image": "https://x/cat.png", "external_task_id": "e-1"}
    )
    assert (
        finished(gateway, "text2video", text["task_id"])["task_result"]["videos"][0]["duration"]
        == "10.0"
    )
    assert query(gateway, "image2video", "e-1")["task_id"] == image["task_id"]
    again = create(
        gateway, "image2video", {"image": "https://x/cat.png", "external_task_id": "e-1"}
    )
    assert error_of(again) == (400, 1201)
    assert "external_task_id already exists" in again.json()["message"]
    stats = gateway.stats()
    assert stats["creates_by_kind"] == {"text2video": 1, "image2video": 1}
    assert stats["rejected_creates"] == 1


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"video_id": "missing"}, (404, 1203)),
        ({"video_id": "V179"}, (400, 1201)),
        ({"video_id": "V5", "cfg_scale": 2}, (400, 1201)),
        ({"video_id": "V5", "prompt": "x" * 2501}, (400, 1201)),
    ],
)
def test_create_refusals(gateway: Gateway, body: dict[str, Any], expected: tuple[int, int]) -> None:
    gateway.admin("/_fake/videos", {"duration": 179.0, "video_id": "V179"})
    gateway.admin("/_fake/videos", {"duration": 5.0, "video_id": "V5"})
    assert error_of(create(gateway, "video-extend", body)) == expected
    assert gateway.stats()["creates_total"] == 0


def test_expired_videos_cannot_be_extended_or_downloaded(gateway: Gateway) -> None:
    parent = gateway.seed(5.0)
    assert gateway.client.head(f"/files/{parent['video_id']}.mp4").status_code == 200
    gateway.admin("/_fake/clock", {"advance_seconds": 30 * 24 * 3600})
    reply = create(gateway, "video-extend", {"video_id": parent["video_id"]})
    assert error_of(reply) == (400, 1201)
    assert "expired" in reply.json()["message"]
    assert gateway.client.get(f"/files/{parent['video_id']}.mp4").status_code == 404


SEEDED = re.compile(r"^seeded video (\S+) \(([\d.]+) s\) made by task (\S+): (\S+)$", re.M)


def test_start_up_seeds_are_printed_and_survive_resets(gateway: Gateway) -> None:
    seeds = SEEDED.findall(gateway.log.read_text())
    assert [float(duration) for _, duration, _, _ in seeds] == [5.0, 7.5]
    for video_id, duration, task_id, url in seeds:
        assert url == f"{gateway.url}/files/{video_id}.mp4"
        head = gateway.client.head(url)
        assert int(head.headers["content-length"]) == video_size(float(duration))
        [video] = query(gateway, "text2video", task_id)["task_result"]["videos"]
        assert (video["id"], video["duration"]) == (video_id, f"{float(duration):.1f}")


# -- auth -------------------------------------------------------------------------------------


def test_a_jwt_from_the_access_key_works(gateway: Gateway) -> None:
    parent = gateway.seed()
    data = created(gateway, "video-extend", {"video_id": parent["video_id"]}, token=mint())
    reply = gateway.client.get(f"/v1/videos/video-extend/{data['task_id']}", headers=bearer(mint()))
    assert reply.json()["data"]["task_id"] == data["task_id"]


@pytest.mark.parametrize(
    ("make_headers", "code"),
    [
        (dict, 1001),
        (lambda: bearer("wrong"), 1002),
        (lambda: bearer(mint(secret="not-the-secret-key-but-long-enough-for-hs256")), 1002),
        (lambda: bearer(mint(nbf_in=120)), 1003),
        (lambda: bearer(mint(nbf_in=-3600, exp_in=-60)), 1004),
    ],
    ids=["none", "wrong-key", "wrong-secret", "not-yet-valid", "expired"],
)
def test_bad_auth_is_refused_with_the_provider_codes(
    gateway: Gateway, make_headers: Callable[[], dict[str, str]], code: int
) -> None:
    headers = make_headers()  # minted when the test runs: a long suite must not age them
    reply = gateway.client.post(
        "/kling/v1/videos/text2video", json={"prompt": "x"}, headers=headers
    )
    assert error_of(reply) == (401, code)
    assert error_of(gateway.client.get("/v1/videos/text2video/x", headers=headers)) == (401, code)
    assert gateway.stats()["tasks"]["submitted"] == 0


# -- callbacks --------------------------------------------------------------------------------


def run_with_callback(gateway: Gateway, receiver: Receiver) -> tuple[str, str]:
    endpoint = receiver.endpoint()
    data = created(gateway, "text2video", {"prompt": "x", "callback_url": endpoint})
    return endpoint, data["task_id"]


def test_callbacks_arrive_in_order_as_bare_task_objects(
    gateway: Gateway, receiver: Receiver
) -> None:
    endpoint, task_id = run_with_callback(gateway, receiver)
    bodies = receiver.wait_for(endpoint, 2)
    assert [b["task_status"] for b in bodies] == ["processing", "succeed"]
    assert all(b["task_id"] == task_id and "code" not in b for b in bodies)
    assert bodies[1] == finished(gateway, "text2video", task_id)


def test_duplicate_knob_sends_extra_copies(gateway: Gateway, receiver: Receiver) -> None:
    gateway.faults({"callbacks": {"duplicate": 1}})
    endpoint, _ = run_with_callback(gateway, receiver)
    bodies = receiver.wait_for(endpoint, 4)
    assert [b["task_status"] for b in bodies] == ["processing"] * 2 + ["succeed"] * 2
    assert wait_until(lambda: gateway.stats()["callbacks_sent"] == 4, "4 callbacks counted")


def test_drop_knob_drops_callbacks(gateway: Gateway, receiver: Receiver) -> None:
    gateway.faults({"callbacks": {"drop": 1}})
    endpoint, task_id = run_with_callback(gateway, receiver)
    assert finished(gateway, "text2video", task_id)["task_status"] == "succeed"
    stats = gateway.stats()
    assert (stats["callbacks_dropped"], stats["callbacks_sent"]) == (2, 0)
    assert receiver.bodies(endpoint) == []


def test_reorder_knob_sends_succeed_before_processing(gateway: Gateway, receiver: Receiver) -> None:
    gateway.faults({"callbacks": {"reorder": True}, "callback_envelope": True})
    endpoint, task_id = run_with_callback(gateway, receiver)
    bodies = receiver.wait_for(endpoint, 2)
    assert [b["data"]["task_status"] for b in bodies] == ["succeed", "processing"]
    assert all(b["code"] == 0 and b["data"]["task_id"] == task_id for b in bodies)


def test_delay_knob_holds_callbacks_back(gateway: Gateway, receiver: Receiver) -> None:
    gateway.faults({"callbacks": {"delay_seconds": 1.0}})
    began = time.monotonic()
    endpoint, _ = run_with_callback(gateway, receiver)
    bodies = receiver.wait_for(endpoint, 2)
    assert time.monotonic() - began >= 1.0 + DELAY
    assert [b["task_status"] for b in bodies] == ["processing", "succeed"]


def test_failed_tasks_report_the_reason(gateway: Gateway, receiver: Receiver) -> None:
    gateway.faults({"fail_next_tasks": {"count": 1, "message": "content risk"}})
    endpoint, task_id = run_with_callback(gateway, receiver)
    done = finished(gateway, "text2video", task_id)
    assert (done["task_status"], done["task_status_msg"]) == ("failed", "content risk")
    assert receiver.wait_for(endpoint, 2)[-1]["task_status"] == "failed"


# -- files ------------------------------------------------------------------------------------


def test_range_and_full_downloads_match_video_bytes(gateway: Gateway) -> None:
    video = gateway.seed(2.5)
    path, size = f"/files/{video['video_id']}.mp4", video_size(2.5)
    expected_part = b"".join(video_bytes(video["video_id"], 70_000, 70_100))

    part = gateway.client.get(path, headers={"Range": "bytes=70000-70099"})
    assert part.status_code == 206
    assert part.headers["content-range"] == f"bytes 70000-70099/{size}"
    assert part.content == expected_part
    tail = gateway.client.get(path, headers={"Range": "bytes=-10"})
    assert (tail.status_code, len(tail.content)) == (206, 10)
    beyond = gateway.client.get(path, headers={"Range": f"bytes={size}-"})
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == f"bytes */{size}"

    whole = gateway.client.get(path)
    assert whole.status_code == 200
    assert whole.headers["content-type"] == "video/mp4"
    assert whole.headers["accept-ranges"] == "bytes"
    assert int(whole.headers["content-length"]) == size
    assert hashlib.sha256(whole.content).hexdigest() == video_sha256(video["video_id"], size)

    gateway.faults({"ranges": False})
    ignored = gateway.client.get(path, headers={"Range": "bytes=0-9"})
    assert (ignored.status_code, len(ignored.content)) == (200, size)
    assert "accept-ranges" not in ignored.headers
    assert gateway.stats()["download_bytes"] == 100 + 10 + size + size


def drain(reply: httpx.Response, sink: bytearray) -> None:
    for chunk in reply.iter_bytes():
        sink += chunk


def test_cut_download_breaks_the_connection(gateway: Gateway) -> None:
    video = gateway.seed(1.0)
    path = f"/files/{video['video_id']}.mp4"
    gateway.faults({"cut_next_downloads": {"count": 1, "after_bytes": 100_000}})
    got = bytearray()
    with gateway.client.stream("GET", path) as reply:
        assert reply.headers["content-length"] == str(video_size(1.0))
        with pytest.raises(BROKEN):
            drain(reply, got)
    assert bytes(got) == b"".join(video_bytes(video["video_id"], 0, 100_000))
    assert len(gateway.client.get(path).content) == video_size(1.0)  # only the next one
    assert gateway.stats()["downloads_started"] == 2


# -- lost and refused creates ---------------------------------------------------------------------


def test_fail_next_creates_answers_the_configured_error(gateway: Gateway) -> None:
    gateway.faults({"fail_next_creates": {"count": 1, "http_status": 429, "code": 1102}})
    parent = gateway.seed()
    assert error_of(create(gateway, "video-extend", {"video_id": parent["video_id"]})) == (
        429,
        1102,
    )
    created(gateway, "video-extend", {"video_id": parent["video_id"]})
    stats = gateway.stats()
    assert (stats["creates_total"], stats["rejected_creates"]) == (1, 1)


def test_a_reset_reply_is_lost_but_the_task_is_billed(gateway: Gateway) -> None:
    gateway.faults({"drop_next_creates": {"count": 1, "mode": "reset"}})
    parent = gateway.seed()
    body = {"video_id": parent["video_id"], "external_task_id": "chain-7-step-1"}
    with pytest.raises(BROKEN):
        create(gateway, "video-extend", body)
    stats = gateway.stats()
    assert stats["creates_total"] == 1
    assert stats["creates_by_parent"] == {parent["video_id"]: 1}
    # The caller can find the task it paid for by its external id instead of paying twice.
    assert (
        query(gateway, "video-extend", "chain-7-step-1")["task_info"]["parent_video"]["id"]
        == (parent["video_id"])
    )


def test_a_hung_reply_times_out_but_the_task_is_billed(gateway: Gateway) -> None:
    gateway.faults({"drop_next_creates": {"count": 1, "mode": "hang", "hang_seconds": 3}})
    parent = gateway.seed()
    with pytest.raises(httpx.TimeoutException):
        gateway.client.post(
            "/v1/videos/video-extend",
            json={"video_id": parent["video_id"]},
            headers=bearer(),
            timeout=0.5,
        )
    assert gateway.stats()["creates_by_parent"] == {parent["video_id"]: 1}


def test_a_bad_gateway_reply_is_a_502_page_but_the_task_is_billed(gateway: Gateway) -> None:
    gateway.faults({"drop_next_creates": {"count": 1, "mode": "bad_gateway"}})
    parent = gateway.seed()
    reply = create(gateway, "video-extend", {"video_id": parent["video_id"]})
    assert reply.status_code == 502
    assert "Bad Gateway" in reply.text
    assert gateway.stats()["creates_by_parent"] == {parent["video_id"]: 1}


def test_a_relay_without_the_task_list_answers_404(gateway: Gateway) -> None:
    parent = gateway.seed()
    created(gateway, "video-extend", {"video_id": parent["video_id"]})
    listed = gateway.client.get("/v1/videos/video-extend?pageNum=1&pageSize=10", headers=bearer())
    assert len(listed.json()["data"]) == 1
    gateway.faults({"support_task_list": False})
    missing = gateway.client.get("/v1/videos/video-extend?pageNum=1&pageSize=10", headers=bearer())
    assert error_of(missing) == (404, 1203)


def test_unknown_paths_and_bad_knobs(gateway: Gateway) -> None:
    assert error_of(gateway.client.get("/v1/videos/nope/x", headers=bearer())) == (404, 1202)
    assert gateway.client.post("/_fake/faults", json={"nope": 1}).status_code == 400
    assert gateway.admin("/_fake/faults")["callbacks"]["drop"] == 0.0


# -- the command line -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags",
    [["--delay", "soon"], ["--port", "70000"], ["--faults", '{"nope": 1}'], ["--access-key", "a"]],
)
def test_bad_flags_get_usage_errors(flags: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kling.fake", *flags],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "usage:" in result.stderr
    assert "Traceback" not in result.stderr
