"""Redis restarted mid-chain (with persistence, as docker-compose runs it), and JWT auth."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import TypedDict

import pytest

from tests.support import PersistentRedis, Service, sha256_file, start_service, stop_service


class FastSettings(TypedDict):
    poll_after_seconds: str
    submit_lease_seconds: str
    recheck_after_seconds: str


FAST: FastSettings = {
    "poll_after_seconds": "2",
    "submit_lease_seconds": "3",
    "recheck_after_seconds": "1",
}


@pytest.fixture
def own_redis(tmp_path: Path, redis_url: str) -> Iterator[PersistentRedis]:
    server = PersistentRedis(tmp_path)
    server.start()
    yield server
    server.stop()


def test_redis_restarted_mid_chain_the_chain_resumes_and_pays_once(
    tmp_path: Path, own_redis: PersistentRedis
) -> None:
    svc = start_service(tmp_path / "svc", own_redis.url, delay=1.0, **FAST)
    try:
        # A download (about 1.2 s) starts as Redis stops and ends while it is down (4 s).
        svc.faults(download_bytes_per_second=30000)
        seed = svc.seed(5.0)
        chain = svc.create({"video_id": seed["video_id"], "task_id": seed["task_id"], "steps": 4})
        deadline = time.monotonic() + 30
        while len(svc.chain(chain["id"])["steps"]) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # When Redis goes down for a while (callbacks meanwhile find no broker) and comes back
        own_redis.stop()
        time.sleep(4.0)
        own_redis.start()
        final = svc.wait(chain["id"], timeout=60)
        # Then the chain finishes, every parent extended exactly once, every video archived
        assert final["status"] == "succeeded", final
        per_parent = svc.stats()["creates_by_parent"]
        assert [per_parent[s["parent_video_id"]] for s in final["steps"]] == [1, 1, 1, 1]
        for entry in final["archive"]:
            path = svc.archive / f"{entry['video_id']}.mp4"
            assert sha256_file(path) == svc.gateway_sha256(entry["video_id"])
    finally:
        stop_service(svc)


@pytest.fixture
def jwt_service(tmp_path: Path, redis_url: str) -> Iterator[Service]:
    access, secret = "ak-test", "sk-" + "s" * 40
    svc = start_service(
        tmp_path,
        redis_url,
        delay=0.3,
        gateway_args=("--access-key", access, "--secret-key", secret),
        kling_access_key=access,
        kling_secret_key=secret,
        kling_api_key="",
        **FAST,
    )
    yield svc
    stop_service(svc)


def test_official_api_auth_with_jwt_runs_a_chain(jwt_service: Service) -> None:
    chain = jwt_service.create({"text_prompt": "lanterns on a river", "steps": 1})
    final = jwt_service.wait(chain["id"])
    assert final["status"] == "succeeded", final


def test_wrong_secret_key_fails_the_step_after_one_re_mint(tmp_path: Path, redis_url: str) -> None:
    svc = start_service(
        tmp_path,
        redis_url,
        delay=0.3,
        gateway_args=("--access-key", "ak-test", "--secret-key", "sk-" + "s" * 40),
        kling_access_key="ak-test",
        kling_secret_key="sk-" + "w" * 40,
        kling_api_key="",
        **FAST,
    )
    try:
        chain = svc.create({"text_prompt": "lanterns on a river", "steps": 1})
        final = svc.wait(chain["id"], timeout=30)
        assert final["status"] == "failed"
        assert "1002" in final["error"]
        time.sleep(2)
        assert svc.stats()["creates_total"] == 0
    finally:
        stop_service(svc)
