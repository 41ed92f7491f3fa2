"""The fake gateway's HTTP shell in-process (Starlette TestClient), on an injected clock."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from kling.fake import FakeConfig, create_app, gateway_of, video_bytes, video_size

START = 1_700_000_000.0


class FakeClock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def client_for(config: FakeConfig) -> TestClient:
    return TestClient(create_app(config, clock=FakeClock()), base_url="http://gw.test")


@pytest.fixture
def client() -> Iterator[TestClient]:
    with client_for(FakeConfig(delay=3.0, seed_videos=(5.0,))) as test_client:
        yield test_client


def seeded_id(client: TestClient) -> str:
    app: Any = client.app
    return gateway_of(app).seeded[0].video_id


def test_no_auth_configured_and_the_clock_moves_tasks(client: TestClient) -> None:
    video_id = seeded_id(client)
    reply = client.post("/kling/v1/videos/video-extend", json={"video_id": video_id})
    task_id = reply.json()["data"]["task_id"]
    assert client.get(f"/v1/videos/video-extend/{task_id}").json()["data"]["task_status"] == (
        "submitted"
    )
    clock = client.post("/_fake/clock", json={"advance_seconds": 3}).json()
    assert clock == {"now": round((START + 3) * 1000), "offset_seconds": 3.0}
    data = client.get(f"/v1/videos/video-extend/{task_id}").json()["data"]
    assert data["task_status"] == "succeed"
    assert data["task_result"]["videos"][0]["url"].startswith("http://gw.test/files/")


def test_public_url_is_used_for_file_links() -> None:
    with client_for(FakeConfig(public_url="https://cdn.example/")) as client:
        seeded = client.post("/_fake/videos", json={"duration": 5, "video_id": "V"})
        assert seeded.status_code == 201
        assert seeded.json()["url"] == "https://cdn.example/files/V.mp4"
        task = client.post("/v1/videos/video-extend", json={"video_id": "V"}).json()["data"]
        assert task["task_info"]["parent_video"]["url"] == "https://cdn.example/files/V.mp4"


def test_reset_goes_back_to_start_up_knobs_and_seeds() -> None:
    config = FakeConfig(faults={"require_parent_task_id": True}, seed_videos=(5.0,))
    with client_for(config) as client:
        app: Any = client.app
        seed = gateway_of(app).seeded[0]
        client.post("/_fake/faults", json={"require_parent_task_id": False})
        client.post("/v1/videos/video-extend", json={"video_id": seed.video_id})
        assert client.get("/_fake/stats").json()["creates_total"] == 1

        client.post("/_fake/reset")
        assert client.get("/_fake/stats").json()["creates_total"] == 0
        assert client.get("/_fake/faults").json()["require_parent_task_id"] is True
        body = {"video_id": seed.video_id}
        assert client.post("/v1/videos/video-extend", json=body).json()["code"] == 1201
        body["task_id"] = seed.task_id
        assert client.post("/v1/videos/video-extend", json=body).json()["code"] == 0


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("POST", "/v1/videos/video-extend", b"{not json", 400, 1200),
        ("POST", "/v1/videos/video-extend", b"[]", 400, 1200),
        ("GET", "/v1/videos/video-extend?pageNum=0", None, 400, 1201),
        ("GET", "/v1/videos/video-extend?pageSize=x", None, 400, 1201),
        ("GET", "/v1/videos/video-extend/nope", None, 404, 1203),
        ("DELETE", "/v1/videos/video-extend/nope", None, 405, 1202),
        ("GET", "/v2/anything", None, 404, 1202),
        ("GET", "/files/nope.mp4", None, 404, 1203),
        ("GET", "/files/nope.avi", None, 404, 1203),
        ("POST", "/_fake/videos", b'{"duration": "long"}', 400, 1201),
        ("POST", "/_fake/clock", b'{"advance_seconds": -1}', 400, 1201),
        ("POST", "/_fake/faults", b'{"ranges": 1}', 400, 1201),
    ],
)
def test_errors_come_in_the_envelope(
    client: TestClient, method: str, path: str, body: bytes | None, status: int, code: int
) -> None:
    reply = client.request(method, path, content=body)
    assert reply.status_code == status
    assert reply.json()["code"] == code
    assert reply.json()["data"] is None


def test_seeding_a_taken_id_conflicts(client: TestClient) -> None:
    assert client.post("/_fake/videos", json={"duration": 5, "video_id": "V"}).status_code == 201
    assert client.post("/_fake/videos", json={"duration": 5, "video_id": "V"}).status_code == 409


def test_head_and_throttled_downloads() -> None:
    with client_for(FakeConfig(bytes_per_second=4000)) as client:
        client.post("/_fake/videos", json={"duration": 5, "video_id": "V"})
        head = client.head("/files/V.mp4", headers={"Range": "bytes=10-"})
        assert head.status_code == 206
        assert head.headers["content-length"] == str(video_size(5, 4000) - 10)
        assert head.content == b""

        client.post("/_fake/faults", json={"download_bytes_per_second": 50_000})
        began = time.monotonic()
        reply = client.get("/files/V.mp4")
        assert time.monotonic() - began >= 0.3  # 20 000 bytes at 50 000 B/s
        assert reply.content == b"".join(video_bytes("V", 0, 20_000))
        stats = client.get("/_fake/stats").json()
        assert (stats["downloads_started"], stats["download_bytes"]) == (1, 20_000)


def test_callbacks_that_cannot_be_delivered_are_counted_not_fatal() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}/cb"  # bound, never listening
        with client_for(FakeConfig(delay=0.0)) as client:
            body = {"prompt": "x", "callback_url": dead}
            task_id = client.post("/v1/videos/text2video", json=body).json()["data"]["task_id"]
            deadline = time.monotonic() + 10
            while client.get("/_fake/stats").json()["callbacks_failed"] < 2:
                assert time.monotonic() < deadline, "the failed callbacks were not counted"
                time.sleep(0.02)
            data = client.get(f"/v1/videos/text2video/{task_id}").json()["data"]
            assert data["task_status"] == "succeed"
            assert client.get("/_fake/stats").json()["callbacks_sent"] == 0


def test_redirecting_file_host() -> None:
    with client_for(FakeConfig(bytes_per_second=4000)) as client:
        client.post("/_fake/videos", json={"duration": 5, "video_id": "V"})
        # An unknown file is still a 404, and does not use up a redirect
        client.post("/_fake/faults", json={"redirect_next_downloads": {"count": 2}})
        assert client.get("/files/nope.mp4", follow_redirects=False).status_code == 404

        # Without a location: back to the same URL, `count` times, then the file
        for _ in range(2):
            reply = client.get("/files/V.mp4?sig=1", follow_redirects=False)
            assert reply.status_code == 302
            assert reply.headers["location"] == "http://gw.test/files/V.mp4?sig=1"
        assert client.get("/files/V.mp4", follow_redirects=False).status_code == 200

        # With one: there, with the status asked for (HEAD too)
        where = "http://127.0.0.2:9/internal.mp4"
        knob = {"count": 1, "location": where, "status": 307}
        client.post("/_fake/faults", json={"redirect_next_downloads": knob})
        reply = client.head("/files/V.mp4", follow_redirects=False)
        assert (reply.status_code, reply.headers["location"]) == (307, where)
        assert client.get("/files/V.mp4", follow_redirects=False).status_code == 200

        stats = client.get("/_fake/stats").json()
        assert (stats["downloads_redirected"], stats["downloads_started"]) == (3, 2)
        faults = client.get("/_fake/faults").json()
        assert faults["redirect_next_downloads"]["count"] == 0
