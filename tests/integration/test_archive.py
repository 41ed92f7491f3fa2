"""Archiving everything the account makes: real Redis, worker, web, gateway, moto's S3."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis
import requests
import standardwebhooks

from chainctl.devstack import find_procfile
from kling.models import VIDEO_LIFETIME_SECONDS
from tests.support import Service, run_cli, sha256_file, start_service, stop_service
from worker.core.videos import VideoRecord
from worker.state.videos import Videos

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

DAY = 24 * 3600.0
NOTIFY_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


class Receiver:
    """A webhook receiver on a free port that records what it is sent."""

    def __init__(self) -> None:
        self.events: list[tuple[dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.events.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        found = []
        for headers, body in list(self.events):
            event = json.loads(body)
            if event["type"] == kind:
                # Every event must verify as a receiver would verify it.
                standardwebhooks.Webhook(NOTIFY_SECRET).verify(body, headers)
                found.append(event)
        return found


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()
    r.server.server_close()


@pytest.fixture(scope="module")
def svc(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, receiver: Receiver
) -> Iterator[Service]:
    service = start_service(
        tmp_path_factory.mktemp("archive"),
        redis_url,
        delay=0.3,
        poll_after_seconds="2",
        notify_url=receiver.url,
        notify_secret=NOTIFY_SECRET,
    )
    yield service
    stop_service(service)


def wait_archived(svc: Service, video_id: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for video in svc.http.get(f"{svc.api}/archive?limit=500", timeout=5).json()["videos"]:
            if video["video_id"] == video_id and video["state"] != "pending":
                return video  # type: ignore[no-any-return]
        time.sleep(0.1)
    raise AssertionError(f"video {video_id} was not settled in {timeout} s")


def gateway_task(svc: Service, kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """Create a task on the gateway as the account's other software would."""
    headers = {"Authorization": f"Bearer {svc.env['KLING_API_KEY']}"}
    reply = requests.post(
        f"{svc.gateway}/kling/v1/videos/{kind}", json=body, headers=headers, timeout=5
    )
    reply.raise_for_status()
    data: dict[str, Any] = reply.json()["data"]
    return data


def finished_video(svc: Service, kind: str, task_id: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {svc.env['KLING_API_KEY']}"}
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        data = requests.get(
            f"{svc.gateway}/kling/v1/videos/{kind}/{task_id}", headers=headers, timeout=5
        ).json()["data"]
        if data["task_status"] == "succeed":
            return data["task_result"]["videos"][0]  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise AssertionError("the gateway task did not finish")


def test_outside_task_is_archived_from_its_callback(svc: Service, receiver: Receiver) -> None:
    # Given the account's other software pointing a task's callback at the archive route
    urls = svc.http.get(f"{svc.api}/archive/callback-urls", timeout=5).json()
    task = gateway_task(
        svc, "text2video", {"prompt": "a koi pond", "callback_url": urls["text2video"]}
    )
    video = finished_video(svc, "text2video", task["task_id"])
    # Then the video is confirmed, archived byte for byte, listed, and announced
    record = wait_archived(svc, video["id"])
    assert record["state"] == "archived", record
    assert (record["task_id"], record["kind"], record["origin"]) == (
        task["task_id"],
        "text2video",
        "callback",
    )
    path = Path(record["location"])
    assert sha256_file(path) == record["sha256"] == svc.gateway_sha256(video["id"])
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["task_id"] == task["task_id"]
    assert sidecar["source_host"] == "127.0.0.1"
    deadline = time.monotonic() + 10
    while not [
        e for e in receiver.of_type("video.archived") if e["data"]["video_id"] == video["id"]
    ]:
        assert time.monotonic() < deadline, receiver.events
        time.sleep(0.05)


def test_forged_archive_callback_is_refused(svc: Service) -> None:
    reply = svc.http.post(
        f"{svc.api}/callbacks/archive/text2video/{'A' * 32}",
        json={"task_id": "t", "task_status": "succeed"},
        timeout=5,
    )
    assert reply.status_code == 403


def test_post_archive_and_cli_queue_tasks(svc: Service) -> None:
    first, second = svc.seed(5.0), svc.seed(10.0)
    reply = svc.http.post(
        f"{svc.api}/archive",
        json={"tasks": [{"task_id": first["task_id"], "kind": "text2video"}]},
        timeout=5,
    )
    assert reply.status_code == 202
    done = run_cli(svc, "archive", second["task_id"], "--kind", "text2video", timeout=30)
    assert done.returncode == 0, done.stderr
    for seed in (first, second):
        record = wait_archived(svc, seed["video_id"])
        assert record["state"] == "archived"
        assert record["sha256"] == svc.gateway_sha256(seed["video_id"])
    bad = svc.http.post(
        f"{svc.api}/archive", json={"tasks": [{"task_id": "x", "kind": "song"}]}, timeout=5
    )
    assert bad.status_code == 422
    assert bad.json()["details"][0]["field"] == "tasks.0.kind"


def test_manifest_pages_filters_and_exports_json_lines(svc: Service) -> None:
    archived = svc.http.get(f"{svc.api}/archive?state=archived&limit=1", timeout=5).json()
    assert len(archived["videos"]) == 1
    assert archived["next_before"] is not None
    assert archived["counts"]["archived"] >= 1
    lines = svc.http.get(f"{svc.api}/archive.jsonl?state=archived", timeout=5).text.splitlines()
    assert len(lines) == archived["counts"]["archived"]
    assert all(json.loads(line)["state"] == "archived" for line in lines)
    assert svc.http.get(f"{svc.api}/archive?state=maybe", timeout=5).status_code == 422
    metrics = svc.http.get(f"{svc.api}/metrics", timeout=5).text
    assert 'kc_videos{state="archived"}' in metrics


def test_chain_end_is_announced_signed(svc: Service, receiver: Receiver) -> None:
    chain = svc.create({"text_prompt": "a kite", "steps": 1})
    final = svc.wait(chain["id"])
    deadline = time.monotonic() + 10
    while not [e for e in receiver.of_type("chain.succeeded") if e["data"]["id"] == chain["id"]]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # the chain's videos are in the manifest too
    for entry in final["archive"]:
        assert wait_archived(svc, entry["video_id"])["chain_id"] == chain["id"]


def test_backlog_is_swept_nearest_deadline_first_and_the_expired_is_lost(
    tmp_path: Path, redis_url: str, receiver: Receiver
) -> None:
    # Given known videos that were never archived (say the storage was down), of several ages
    svc = start_service(
        tmp_path,
        redis_url,
        delay=0.2,
        processes=("web", "beat"),
        notify_url=receiver.url,
        notify_secret=NOTIFY_SECRET,
    )
    try:
        videos = Videos(redis.Redis.from_url(redis_url), prefix=svc.prefix)
        now = time.time()
        ages = {"d5": 5, "d28": 28.5, "d12": 12, "d31": 31, "d20": 20}
        ids = {}
        for name, age in ages.items():
            seed = svc.seed(5.0)
            ids[name] = seed["video_id"]
            videos.register(
                VideoRecord(
                    video_id=seed["video_id"],
                    task_id=seed["task_id"],
                    kind="text2video",
                    url=f"{svc.gateway}/files/{seed['video_id']}.mp4",
                    created_at=now - age * DAY,
                    known_at=now,
                    origin="request",
                )
            )
        # When one worker starts
        svc.stack.start("worker", find_procfile()["worker"], {**svc.env, "WORKER_CONCURRENCY": "1"})
        settled = {name: wait_archived(svc, vid) for name, vid in ids.items()}
        # Then the expired one is lost with the reason, the rest archived nearest-deadline first
        assert settled["d31"]["state"] == "lost"
        assert "30 days" in settled["d31"]["error"]
        order = sorted((n for n in ages if n != "d31"), key=lambda n: settled[n]["archived_at"])
        assert order == ["d28", "d20", "d12", "d5"]
        assert all(settled[n]["state"] == "archived" for n in order)
        assert settled["d28"]["expires_at"] - settled["d28"]["created_at"] == VIDEO_LIFETIME_SECONDS
        lost = [e for e in receiver.of_type("video.lost") if e["data"]["video_id"] == ids["d31"]]
        risky = [
            e for e in receiver.of_type("video.at_risk") if e["data"]["video_id"] == ids["d28"]
        ]
        deadline = time.monotonic() + 10
        while not (lost and risky):
            assert time.monotonic() < deadline, receiver.events
            time.sleep(0.1)
            lost = [
                e for e in receiver.of_type("video.lost") if e["data"]["video_id"] == ids["d31"]
            ]
            risky = [
                e for e in receiver.of_type("video.at_risk") if e["data"]["video_id"] == ids["d28"]
            ]
        assert "is not archived and will be deleted" in svc.stack.tail("worker", 400)
    finally:
        stop_service(svc)


def test_s3_archive_through_the_whole_service(
    tmp_path: Path, redis_url: str, s3: S3Client, bucket: str, s3_endpoint: str
) -> None:
    svc = start_service(
        tmp_path,
        redis_url,
        delay=0.2,
        gateway_args=("--bytes-per-second", "1300000"),  # a 10 s video is 13 MB: 2 parts + a tail
        archive_url=f"s3://{bucket}/kling/archive",
        s3_endpoint_url=s3_endpoint,
        s3_part_size=str(5 * 1024 * 1024),
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        aws_default_region="us-east-1",
    )
    try:
        seed = svc.seed(10.0)
        svc.http.post(
            f"{svc.api}/archive",
            json={"tasks": [{"task_id": seed["task_id"], "kind": "text2video"}]},
            timeout=5,
        ).raise_for_status()
        record = wait_archived(svc, seed["video_id"], timeout=60)
        assert record["state"] == "archived", record
        key = f"kling/archive/{seed['video_id']}.mp4"
        assert record["location"] == f"s3://{bucket}/{key}"
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert len(body) == 13_000_000
        assert (
            hashlib.sha256(body).hexdigest()
            == record["sha256"]
            == svc.gateway_sha256(seed["video_id"])
        )
        sidecar = json.loads(
            s3.get_object(Bucket=bucket, Key=f"kling/archive/{seed['video_id']}.json")[
                "Body"
            ].read()
        )
        assert sidecar["sha256"] == record["sha256"]
        assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    finally:
        stop_service(svc)
