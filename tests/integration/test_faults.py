"""Spend safety and delivery under injected faults: real Redis, worker, web and gateway.

Each test arms a knob of the fake gateway (or kills a process), runs a chain, and checks the
promise: every step paid for once, every good video archived byte for byte, and nothing an
outsider sends changes that.
"""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from chainctl.devstack import find_procfile, free_port, wait_http
from tests.support import (
    FAST,
    Service,
    fresh,
    module_service,
    sha256_file,
    start_chain,
    start_service,
    stop_service,
)
from worker.core import tokens

svc = module_service("faults", delay=0.5, **FAST)


@pytest.fixture(autouse=True)
def _fresh_gateway(request: pytest.FixtureRequest) -> None:
    if "svc" in request.fixturenames:
        fresh(request.getfixturevalue("svc"))


def assert_promise_kept(svc: Service, chain: dict[str, Any], *, steps: int) -> None:
    """Succeeded, every parent extended exactly once, every video archived byte for byte."""
    assert chain["status"] == "succeeded", chain
    assert len(chain["steps"]) == steps
    per_parent = svc.stats()["creates_by_parent"]
    parents = [s["parent_video_id"] for s in chain["steps"]]
    assert [per_parent.get(p) for p in parents] == [1] * steps, per_parent
    for entry in chain["archive"]:
        path = svc.archive / f"{entry['video_id']}.mp4"
        assert sha256_file(path) == entry["sha256"] == svc.gateway_sha256(entry["video_id"])
    assert not [p for p in svc.archive.iterdir() if p.name.endswith(".part")]


def wait_for(check: Any, timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# -- callbacks ---------------------------------------------------------------------------------
def test_lost_callbacks_the_sweep_still_finishes_the_chain(svc: Service) -> None:
    svc.faults(callbacks={"drop": 1})
    chain = svc.wait(start_chain(svc)["id"], timeout=60)
    assert svc.stats()["callbacks_sent"] == 0
    assert svc.stats()["callbacks_dropped"] > 0
    assert_promise_kept(svc, chain, steps=3)


def test_duplicated_and_reordered_callbacks_pay_once_and_download_once(svc: Service) -> None:
    svc.faults(callbacks={"duplicate": 4, "reorder": True})
    chain = svc.wait(start_chain(svc)["id"])
    downloads = svc.stats()["downloads_started"]
    assert downloads == len(chain["archive"]) == 3
    assert_promise_kept(svc, chain, steps=3)


def test_callback_storm_across_two_web_processes_submits_each_step_once(svc: Service) -> None:
    # Given a second web process on the same Redis, and a gateway that sends no callbacks
    port = free_port()
    web2 = svc.stack.start("web2", find_procfile()["web"], {**svc.env, "PORT": str(port)})
    wait_http(f"http://127.0.0.1:{port}/healthz", proc=web2)
    webs = [svc.api, f"http://127.0.0.1:{port}"]
    svc.faults(callbacks={"drop": 1})
    secret = svc.env["CALLBACK_SECRET"].encode()
    chain = start_chain(svc)
    headers = {"Authorization": f"Bearer {svc.env['KLING_API_KEY']}"}
    try:
        # When 24 copies of each step's final callback hit both web processes at once
        for index in range(3):
            step = wait_for(
                lambda i=index: next(
                    (
                        s
                        for s in svc.chain(chain["id"])["steps"]
                        if s["index"] == i and s["task_id"]
                    ),
                    None,
                ),
                what=f"step {index} submitted",
            )
            url = f"{svc.gateway}/kling/v1/videos/video-extend/{step['task_id']}"
            body = wait_for(
                lambda u=url: (
                    d
                    if (d := requests.get(u, headers=headers, timeout=5).json()["data"])[
                        "task_status"
                    ]
                    == "succeed"
                    else None
                ),
                what="the task to finish",
            )
            path = f"/callbacks/{chain['id']}/{index}/{tokens.sign(secret, chain['id'], index)}"
            with ThreadPoolExecutor(12) as pool:
                codes = list(
                    pool.map(
                        lambda n, p=path, b=body: (
                            requests.post(f"{webs[n % 2]}{p}", json=b, timeout=10).status_code
                        ),
                        range(24),
                    )
                )
            assert set(codes) == {200}
        final = svc.wait(chain["id"])
    finally:
        svc.stack.kill("web2", signal.SIGTERM)
    # Then each step was created once and each video downloaded once
    assert svc.stats()["downloads_started"] == 3
    assert_promise_kept(svc, final, steps=3)


def test_forged_callbacks_change_nothing(svc: Service) -> None:
    svc.fake("POST", "/_fake/faults", {})
    seed = svc.seed(5.0)
    chain = svc.create({"video_id": seed["video_id"], "task_id": seed["task_id"], "steps": 1})
    step = wait_for(
        lambda: (
            svc.chain(chain["id"])["steps"][0]["task_id"] and svc.chain(chain["id"])["steps"][0]
        ),
        what="step 0 submitted",
    )
    forged = {
        "task_id": step["task_id"],
        "task_status": "succeed",
        "task_result": {
            "videos": [{"id": "evil", "url": "http://127.0.0.1:9/evil.mp4", "duration": "9"}]
        },
    }
    secret = svc.env["CALLBACK_SECRET"].encode()
    good = tokens.sign(secret, chain["id"], 0)
    bad = svc.http.post(
        f"{svc.api}/callbacks/{chain['id']}/0/{'x' * len(good)}", json=forged, timeout=5
    )
    assert bad.status_code == 403
    junk = svc.http.post(f"{svc.api}/callbacks/{chain['id']}/0/{good}", data=b"{oops", timeout=5)
    assert junk.status_code == 400
    # Even with a valid token the body is only a hint: the worker asks the provider.
    hint = svc.http.post(f"{svc.api}/callbacks/{chain['id']}/0/{good}", json=forged, timeout=5)
    assert hint.status_code == 200
    final = svc.wait(chain["id"])
    assert final["status"] == "succeeded"
    assert [a["video_id"] for a in final["archive"]] != ["evil"]
    assert not (svc.archive / "evil.mp4").exists()
    assert_promise_kept(svc, final, steps=1)


# -- provider errors ---------------------------------------------------------------------------
def test_rate_limits_back_off_show_waiting_and_then_succeed(svc: Service) -> None:
    svc.faults(
        fail_next_creates={"count": 2, "http_status": 429, "code": 1302, "message": "too fast"}
    )
    chain = start_chain(svc, steps=1)
    waiting = wait_for(lambda: svc.chain(chain["id"])["waiting"], what="a waiting note")
    assert "1302" in waiting
    final = svc.wait(chain["id"])
    assert svc.stats()["rejected_creates"] == 2
    assert_promise_kept(svc, final, steps=1)


def test_exhausted_balance_fails_at_once_and_is_tried_exactly_once(svc: Service) -> None:
    svc.faults(
        fail_next_creates={
            "count": 5,
            "http_status": 429,
            "code": 1102,
            "message": "resource pack exhausted",
        }
    )
    final = svc.wait(start_chain(svc)["id"], timeout=20)
    assert final["status"] == "failed"
    assert "1102" in final["error"]
    assert "resource pack exhausted" in final["error"]
    time.sleep(3)  # longer than a lease and a sweep: nothing tries again
    assert svc.stats()["rejected_creates"] == 1
    assert svc.stats()["creates_total"] == 0


@pytest.mark.parametrize("mode", ["reset", "hang"])
def test_lost_create_reply_is_looked_up_never_paid_twice(svc: Service, mode: str) -> None:
    svc.faults(drop_next_creates={"count": 1, "mode": mode, "hang_seconds": 4})
    final = svc.wait(start_chain(svc)["id"], timeout=60)
    assert svc.stats()["creates_total"] == 3
    assert_promise_kept(svc, final, steps=3)


def test_without_external_ids_a_lost_reply_is_found_in_the_task_list(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str
) -> None:
    svc = start_service(
        tmp_path_factory.mktemp("noext"),
        redis_url,
        delay=0.5,
        gateway_args=("--faults", '{"support_external_task_id": false}'),
        kling_external_task_id="false",
        **FAST,
    )
    try:
        # The task list finds the lost task (tests/integration/test_lost_creates.py has the
        # provider that cannot tell, where the step stops for attention instead).
        svc.faults(callbacks={"drop": 1}, drop_next_creates={"count": 1, "mode": "reset"})
        final = svc.wait(start_chain(svc)["id"], timeout=60)
        assert_promise_kept(svc, final, steps=3)
        time.sleep(3)
        assert svc.stats()["creates_total"] == 3
    finally:
        stop_service(svc)


# -- durations the provider gets wrong ------------------------------------------------------------
START_FROM = {
    "a video of known length": {"source_duration": 5.0},
    "a video of unknown length": {},
    "text": None,
}


def start_toward(svc: Service, start: dict[str, Any] | None, target: float) -> dict[str, Any]:
    if start is None:
        return svc.create({"text_prompt": "a fox in the snow", "target_seconds": target})
    seed = svc.seed(5.0)
    body = {"video_id": seed["video_id"], "task_id": seed["task_id"], "target_seconds": target}
    return svc.create(body | start)


@pytest.mark.parametrize("start", list(START_FROM))
def test_a_relay_reporting_only_the_added_segment_stops_after_one_paid_extension(
    svc: Service, start: str
) -> None:
    # Given a relay whose extension results report only the seconds they added (the video
    # never seems to grow), and a chain toward 60 s with no step count
    svc.faults(result_durations="segment")
    chain = start_toward(svc, START_FROM[start], 60.0)
    # When the first extension comes back "4.x s long" from a 5 s parent
    final = svc.wait(chain["id"], timeout=30)
    # Then the chain fails after paying for one extension, and never pays again
    assert final["status"] == "failed", final
    assert svc.stats()["creates_by_kind"].get("video-extend") == 1, final["error"]
    time.sleep(3)  # longer than a lease and a sweep: nothing is submitted after the failure
    assert svc.stats()["creates_total"] == (2 if start == "text" else 1)
    assert svc.chain(chain["id"])["steps"] == final["steps"]
    # with a message naming both durations
    extension = final["steps"][-1]
    assert (extension["kind"], extension["status"]) == ("video-extend", "failed")
    reported = extension["duration"]
    assert reported is not None
    assert 4.0 <= reported <= 5.0
    assert f"{reported:.1f} s" in final["error"], final["error"]
    assert "its parent was 5.0 s" in final["error"], final["error"]
    # and the extension that was paid for is still archived whole
    entry = final["archive"][-1]
    assert (entry["video_id"], entry["status"]) == (extension["video_id"], "done")
    assert sha256_file(svc.archive / f"{entry['video_id']}.mp4") == svc.gateway_sha256(
        entry["video_id"]
    )


@pytest.mark.parametrize("start", list(START_FROM))
def test_a_relay_reporting_no_durations_fails_the_chain_before_paying_again(
    svc: Service, start: str
) -> None:
    # Given a relay whose results carry no duration at all
    svc.faults(result_durations="missing")
    chain = start_toward(svc, START_FROM[start], 60.0)
    # When the first result comes back
    final = svc.wait(chain["id"], timeout=30)
    # Then the chain fails on that step (text2video or extension), and pays for nothing more
    assert final["status"] == "failed", final
    assert [s["status"] for s in final["steps"]] == ["failed"]
    assert "no duration" in final["error"], final["error"]
    time.sleep(3)
    assert svc.stats()["creates_total"] == 1
    assert [a["status"] for a in final["archive"]] == ["done"]


# -- crashes -----------------------------------------------------------------------------------
def test_worker_killed_mid_create_loses_nothing_and_pays_once(svc: Service) -> None:
    # Given a create that the provider accepts but answers only after 6 s
    svc.faults(drop_next_creates={"count": 1, "mode": "hang", "hang_seconds": 6})
    chain = start_chain(svc, steps=2)
    wait_for(lambda: svc.stats()["creates_total"] == 1, what="the hanging create to be billed")
    # When the whole worker is killed while it waits for the reply, then started again
    svc.stack.kill("worker")
    svc.stack.start("worker", find_procfile()["worker"], svc.env)
    final = svc.wait(chain["id"], timeout=60)
    # Then the step was found by its external id, not sent again
    assert_promise_kept(svc, final, steps=2)


def test_web_restarted_mid_chain_the_chain_still_finishes(svc: Service) -> None:
    chain = start_chain(svc)
    wait_for(lambda: len(svc.chain(chain["id"])["steps"]) >= 2, what="step 1")
    svc.stack.kill("web")
    time.sleep(1.5)  # callbacks sent now find nobody
    svc.stack.start("web", find_procfile()["web"], svc.env)
    wait_http(f"{svc.api}/healthz", proc=svc.stack.procs["web"])
    final = svc.wait(chain["id"], timeout=60)
    assert_promise_kept(svc, final, steps=3)


def test_two_beats_by_mistake_still_pay_once(svc: Service) -> None:
    beat2 = {**svc.env, "BEAT_SCHEDULE": str(svc.archive.parent / "beat2-schedule")}
    svc.stack.start("beat2", find_procfile()["beat"], beat2)
    try:
        svc.faults(callbacks={"drop": 1})
        final = svc.wait(start_chain(svc)["id"], timeout=60)
    finally:
        svc.stack.kill("beat2", signal.SIGTERM)
    assert_promise_kept(svc, final, steps=3)


# -- downloads ---------------------------------------------------------------------------------
@pytest.mark.parametrize("ranges", [True, False])
def test_broken_downloads_resume_or_restart_and_arrive_whole(svc: Service, ranges: bool) -> None:
    svc.faults(cut_next_downloads={"count": 3, "after_bytes": 5000}, ranges=ranges)
    final = svc.wait(start_chain(svc)["id"], timeout=60)
    assert svc.stats()["downloads_started"] >= 3 + 3
    assert_promise_kept(svc, final, steps=3)
