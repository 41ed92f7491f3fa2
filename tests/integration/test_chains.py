"""Chains end to end over real sockets: Redis, a Celery worker, uvicorn, the fake gateway."""

from __future__ import annotations

import itertools
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from chainctl.devstack import Stack, find_procfile, free_port
from tests.support import Service, sha256_file


def assert_archive_matches_gateway(service: Service, chain: dict[str, object]) -> None:
    archive = chain["archive"]
    assert isinstance(archive, list)
    assert archive, "nothing was archived"
    for entry in archive:
        assert entry["status"] == "done", entry
        path = service.archive / f"{entry['video_id']}.mp4"
        assert entry["path"] == str(path)
        assert path.stat().st_size == entry["bytes"]
        assert sha256_file(path) == entry["sha256"] == service.gateway_sha256(entry["video_id"])
        sidecar = json.loads(path.with_suffix(".json").read_text())
        assert sidecar["sha256"] == entry["sha256"]
        assert sidecar["duration"] == entry["duration"]
    leftovers = [p.name for p in service.archive.iterdir() if p.name.endswith(".part")]
    assert leftovers == []


def assert_paid_once(service: Service) -> None:
    per_parent = service.stats()["creates_by_parent"]
    assert per_parent, "no creates were counted"
    assert set(per_parent.values()) == {1}, f"a parent video was extended twice: {per_parent}"


def test_five_seconds_to_thirty_arrives_byte_identical(service: Service) -> None:
    # Given a 5 s video the provider made
    seed = service.seed(5.0)
    # When a user asks for at least 30 s
    chain = service.create(
        {"video_id": seed["video_id"], "task_id": seed["task_id"], "target_seconds": 30}
    )
    assert chain["status"] == "queued"
    final = service.wait(chain["id"])
    # Then it succeeds with the target reached, every video archived byte for byte, paid once
    assert final["status"] == "succeeded", final
    assert final["end_reason"] == "target_reached"
    assert 30 <= final["duration"] < 35
    steps = final["steps"]
    assert all(s["status"] == "succeed" for s in steps)
    assert steps[0]["parent_video_id"] == seed["video_id"]
    for before, after in itertools.pairwise(steps):
        assert after["parent_video_id"] == before["video_id"]
    assert_archive_matches_gateway(service, final)
    assert_paid_once(service)


def test_forty_steps_stop_at_the_cap(service: Service) -> None:
    seed = service.seed(5.0)
    chain = service.create({"video_id": seed["video_id"], "task_id": seed["task_id"], "steps": 40})
    final = service.wait(chain["id"], timeout=240)
    assert final["status"] == "succeeded", final
    assert final["end_reason"] == "cap_reached"
    assert 175 < final["duration"] <= 180
    assert len(final["steps"]) < 40
    # the last step was only sent because it could not pass 180 s
    last_parent = final["steps"][-1]
    parent_duration = final["steps"][-2]["duration"]
    assert parent_duration + 5 <= 180, last_parent
    assert_archive_matches_gateway(service, final)
    assert_paid_once(service)


def test_failed_step_keeps_newest_good_video_and_reports_reason(service: Service) -> None:
    seed = service.seed(5.0)
    chain = service.create({"video_id": seed["video_id"], "task_id": seed["task_id"], "steps": 4})
    # Arm a failure for the create that follows step 1 (fates are set when a task is created).
    deadline = time.monotonic() + 30
    while True:
        steps = service.chain(chain["id"])["steps"]
        if len(steps) >= 2 and steps[1]["task_id"]:
            break
        assert time.monotonic() < deadline, steps
        time.sleep(0.02)
    service.faults(
        fail_next_tasks={"count": 1, "message": "Failure to pass the risk control system"}
    )
    final = service.wait(chain["id"])
    assert final["status"] == "failed", final
    assert "risk control" in final["error"]
    assert final["steps"][2]["status"] == "failed"
    assert final["steps"][2]["error"] == "Failure to pass the risk control system"
    assert final["duration"] == final["steps"][1]["duration"]
    newest = final["steps"][1]["video_id"]
    assert newest in {a["video_id"] for a in final["archive"] if a["status"] == "done"}
    assert_archive_matches_gateway(service, final)


def test_text_prompt_chain(service: Service) -> None:
    chain = service.create({"text_prompt": "a red fox crossing a snowy field", "steps": 2})
    final = service.wait(chain["id"])
    assert final["status"] == "succeeded", final
    assert final["end_reason"] == "steps_done"
    assert [s["kind"] for s in final["steps"]] == ["text2video", "video-extend", "video-extend"]
    assert final["steps"][1]["parent_video_id"] == final["steps"][0]["video_id"]
    assert_archive_matches_gateway(service, final)


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"video_id": "v", "target_seconds": 181}, "target_seconds", "less than or equal to 180"),
        ({"video_id": "v", "steps": 0}, "steps", "greater than or equal to 1"),
        ({"video_id": "v"}, None, "target_seconds"),
        ({"target_seconds": 30}, None, "video_id"),
        ({"video_id": "v", "steps": 1, "prompt": "x" * 2501}, "prompt", "2500"),
        ({"video_id": "v", "steps": 1, "cfg_scale": 2}, "cfg_scale", "less than or equal to 1"),
        ({"video_id": "../etc", "steps": 1}, "video_id", "pattern"),
        ({"video_id": "v", "steps": 1, "colour": "red"}, "colour", "unknown field"),
        ({"video_id": "v", "steps": 1, "source_duration": 178}, None, "180 s cap"),
    ],
)
def test_invalid_requests_get_422_naming_field_and_rule(
    service: Service, body: dict[str, object], field: str | None, words: str
) -> None:
    before = service.stats()["creates_total"]
    reply = service.post_chain(body)
    assert reply.status_code == 422
    details = reply.json()["details"]
    assert any(d["field"] == field and words in d["message"] for d in details), details
    assert service.stats()["creates_total"] == before


def test_unknown_chain_is_404_and_listing_is_newest_first(service: Service) -> None:
    assert service.http.get(f"{service.api}/chains/nope", timeout=5).status_code == 404
    first = service.create({"text_prompt": "one", "steps": 1})
    second = service.create({"text_prompt": "two", "steps": 1})
    listed = service.http.get(f"{service.api}/chains?limit=2", timeout=5).json()
    assert [c["id"] for c in listed["chains"]] == [second["id"], first["id"]]
    more = service.http.get(
        f"{service.api}/chains?limit=2&before={listed['next_before']}", timeout=5
    ).json()
    assert first["id"] not in [c["id"] for c in more["chains"]]
    for chain in (first, second):
        service.wait(chain["id"])


def test_healthz_reports_redis(service: Service) -> None:
    reply = service.http.get(f"{service.api}/healthz", timeout=5)
    assert reply.status_code == 200
    assert reply.json()["redis"] is True
    assert set(reply.json()["callbacks"]) == {"reachable", "reason", "last_seen_at"}


def test_healthz_is_503_when_redis_is_down(tmp_path: Path) -> None:
    stack = Stack(tmp_path)
    port = free_port()
    env = {
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there
        "CALLBACK_SECRET": "x" * 32,
        "API_TOKEN": "t" * 32,
        "KLING_API_KEY": "k",
        "PORT": str(port),
    }
    stack.start("web", find_procfile()["web"], env)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                reply = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, stack.tail("web")
                time.sleep(0.1)
        assert reply.status_code == 503
        assert reply.json() == {"redis": False}
    finally:
        stack.stop()


def test_concurrent_retries_with_one_idempotency_key_make_one_chain(service: Service) -> None:
    seed = service.seed(5.0)
    body = {"video_id": seed["video_id"], "task_id": seed["task_id"], "steps": 1}
    headers = {
        "Idempotency-Key": f"retry-{seed['video_id']}",
        "Authorization": f"Bearer {service.env['API_TOKEN']}",
    }

    def post(_: int) -> requests.Response:  # one session per thread: requests' are not shared
        return requests.post(f"{service.api}/chains", json=body, headers=headers, timeout=10)

    with ThreadPoolExecutor(10) as pool:
        replies = list(pool.map(post, range(10)))
    assert sorted(r.status_code for r in replies) == [200] * 9 + [202]
    assert len({r.json()["id"] for r in replies}) == 1
    service.wait(replies[0].json()["id"])
    assert service.stats()["creates_by_parent"][seed["video_id"]] == 1
