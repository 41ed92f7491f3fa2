"""The fake gateway's MP4 files over HTTP: whole, in ranges, cut and resumed, and archived."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from typing import Any

import av
import pytest
from starlette.testclient import TestClient

from kling.fake import FakeConfig, create_app, gateway_of
from kling.fake.mp4 import FPS, colour_of, encode
from tests.support import module_service, sha256_file, start_chain

svc = module_service("mp4", gateway_args=("--video-format", "mp4"))


def facts(data: bytes) -> dict[str, Any]:
    with av.open(io.BytesIO(data), "r") as container:
        stream = container.streams.video[0]
        assert stream.duration is not None
        assert stream.time_base is not None
        frames = sum(1 for _ in container.decode(stream))
        return {
            "codec": stream.codec_context.name,
            "duration": float(stream.duration * stream.time_base),
            "frames": frames,
        }


def drain(reply: Any, sink: bytearray) -> None:
    for chunk in reply.iter_bytes():
        sink += chunk


@pytest.fixture
def client() -> Iterator[TestClient]:
    app = create_app(FakeConfig(video_format="mp4"))
    with TestClient(app, base_url="http://gw.test") as test_client:
        test_client.post("/_fake/videos", json={"duration": 7.5, "video_id": "V"})
        yield test_client


def test_the_file_is_a_playable_video_of_the_stated_duration(client: TestClient) -> None:
    head = client.head("/files/V.mp4")
    whole = client.get("/files/V.mp4")

    assert whole.status_code == 200
    assert whole.headers["content-type"] == "video/mp4"
    assert whole.headers["accept-ranges"] == "bytes"
    assert int(head.headers["content-length"]) == len(whole.content)
    assert int(whole.headers["content-length"]) == len(whole.content)
    assert whole.content == encode(7.5, colour_of("V"))
    assert facts(whole.content) == {"codec": "h264", "duration": 7.5, "frames": 75}


def test_ranges_are_slices_of_the_same_file(client: TestClient) -> None:
    whole = client.get("/files/V.mp4").content
    size = len(whole)

    part = client.get("/files/V.mp4", headers={"Range": "bytes=100-4099"})
    tail = client.get("/files/V.mp4", headers={"Range": "bytes=-10"})
    rest = client.get("/files/V.mp4", headers={"Range": f"bytes={size - 500}-"})
    beyond = client.get("/files/V.mp4", headers={"Range": f"bytes={size}-"})

    assert (part.status_code, part.headers["content-range"]) == (206, f"bytes 100-4099/{size}")
    assert part.content == whole[100:4100]
    assert tail.content == whole[-10:]
    assert rest.content == whole[size - 500 :]
    assert (beyond.status_code, beyond.headers["content-range"]) == (416, f"bytes */{size}")


def test_a_cut_download_resumes_into_the_same_file(client: TestClient) -> None:
    whole = client.get("/files/V.mp4").content
    client.post("/_fake/faults", json={"cut_next_downloads": {"count": 1, "after_bytes": 3000}})
    got = bytearray()
    with client.stream("GET", "/files/V.mp4") as reply:
        assert int(reply.headers["content-length"]) == len(whole)
        with pytest.raises(Exception, match="cut after 3000 bytes"):
            drain(reply, got)
    assert bytes(got) == whole[:3000]
    resumed = client.get("/files/V.mp4", headers={"Range": f"bytes={len(got)}-"})
    assert bytes(got) + resumed.content == whole


def test_each_file_is_encoded_once() -> None:
    app = create_app(FakeConfig(video_format="mp4"))
    with TestClient(app, base_url="http://gw.test") as client:
        client.post("/_fake/videos", json={"duration": 4.0, "video_id": "A"})
        client.post("/_fake/videos", json={"duration": 4.0, "video_id": "B"})
        for _ in range(3):
            client.get("/files/A.mp4")
            client.get("/files/A.mp4", headers={"Range": "bytes=10-20"})
        client.get("/files/B.mp4")
        mp4 = gateway_of(app).mp4
        assert mp4 is not None
        assert mp4.encoded == 2


def test_a_video_too_long_to_encode_gets_a_reason_not_a_crash(client: TestClient) -> None:
    client.post("/_fake/videos", json={"duration": 700, "video_id": "LONG"})
    reply = client.get("/files/LONG.mp4")
    assert reply.status_code == 500
    assert "at most 600 s (or run with --video-format random)" in reply.json()["message"]


def test_random_content_stays_available() -> None:
    app = create_app(FakeConfig(video_format="random"))
    with TestClient(app, base_url="http://gw.test") as client:
        client.post("/_fake/videos", json={"duration": 1.0, "video_id": "R"})
        reply = client.get("/files/R.mp4")
        assert len(reply.content) == 200_000
        assert gateway_of(app).mp4 is None


def test_a_chain_through_the_mp4_gateway_archives_playable_videos(svc: Any) -> None:
    # Given a gateway serving MP4 files and a chain of two extensions of a 5 s video
    chain = start_chain(svc, steps=2)
    # When it ends
    final = svc.wait(chain["id"])
    # Then every archived file is the gateway's file, and plays for the step's duration
    assert final["status"] == "succeeded", final
    durations = {step["video_id"]: step["duration"] for step in final["steps"]}
    archived = {entry["video_id"]: entry for entry in final["archive"]}
    assert set(durations) <= set(archived)
    for video_id, duration in durations.items():
        entry = archived[video_id]
        path = svc.archive / f"{video_id}.mp4"
        assert entry["status"] == "done", entry
        data = path.read_bytes()
        assert sha256_file(path) == entry["sha256"] == svc.gateway_sha256(video_id)
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        played = facts(data)
        assert played["codec"] == "h264"
        assert played["duration"] == pytest.approx(duration)
        assert played["frames"] == round(duration * FPS)
