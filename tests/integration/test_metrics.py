"""``GET /metrics`` over the real service: the figures of every process, kept in Redis, so they
survive a worker restart and two web processes (and the web and the worker) add to the same
counters."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

from chainctl.devstack import find_procfile, free_port, wait_http
from tests.support import Service, fresh, module_service, start_chain

# Tasks take 1 s, so the step moves on from its success callback, never from an earlier one
# whose query happened to find the task done already (no turnaround then).
svc = module_service("metrics", delay=1.0)

FAMILIES = {
    "kc_creates_total": "counter",
    "kc_callbacks_total": "counter",
    "kc_queries_total": "counter",
    "kc_step_turnaround_seconds": "histogram",
    "kc_task_seconds": "histogram",
    "kc_download_bytes_total": "counter",
    "kc_download_seconds": "histogram",
    "kc_chains": "gauge",
    "kc_videos": "gauge",
    "kc_videos_at_risk": "gauge",
    "kc_units_spent_total": "counter",
    "kc_units_spent_today": "gauge",
    "kc_provider_slots_in_use": "gauge",
    "kc_queue_depth": "gauge",
    "kc_oldest_unarchived_video_age_seconds": "gauge",
}


def scrape(service: Service, api: str | None = None) -> tuple[str, dict[str, float]]:
    """The text of ``/metrics`` and its samples: ``name{k=v,...}`` -> value."""
    reply = service.http.get(f"{api or service.api}/metrics", timeout=10)
    assert reply.status_code == 200, reply.text
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(reply.text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}"] = float(s.value)
    return reply.text, samples


def value(samples: dict[str, float], key: str) -> float:
    return samples.get(key, 0.0)


def wait_for(check: Callable[[], Any], *, what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


ACCEPTED = "kc_creates_total{kind=video-extend,outcome=accepted}"
CALLBACKS = "kc_callbacks_total{outcome=accepted}"
FORBIDDEN = "kc_callbacks_total{outcome=forbidden}"
TASKS = "kc_task_seconds_count{}"
UNITS = "kc_units_spent_total{}"
DOWNLOADS = "kc_download_seconds_count{}"


def test_a_chain_is_counted_in_every_family(svc: Service) -> None:
    fresh(svc)
    _, before = scrape(svc)
    # When a chain of two extensions runs through the service
    final = svc.wait(start_chain(svc, steps=2)["id"])
    assert final["status"] == "succeeded", final
    wait_for(
        lambda: value(scrape(svc)[1], DOWNLOADS) - value(before, DOWNLOADS) >= 2,
        what="both videos to be downloaded",
    )
    text, after = scrape(svc)
    # Then every family is there with its exact name and type
    types = {f.name: f.type for f in text_string_to_metric_families(text)}
    for name, kind in FAMILIES.items():
        shown = name.removesuffix("_total") if kind == "counter" else name
        assert types.get(shown) == kind, f"{name} missing or not a {kind}: {types}"
        assert f"# TYPE {name} {kind}" in text

    def grew(key: str) -> float:
        return value(after, key) - value(before, key)

    # and the chain's creates, callbacks, tasks, units and downloads were counted
    assert grew(ACCEPTED) == 2
    assert grew(CALLBACKS) >= 2  # the fake gateway calls back on every status change
    assert grew(TASKS) == 2  # each task's provider time observed once
    assert value(after, "kc_task_seconds_sum{}") > value(before, "kc_task_seconds_sum{}")
    assert grew(UNITS) == 2  # the fake bills "1" per task
    assert grew("kc_queries_total{outcome=ok}") >= 2
    assert grew("kc_step_turnaround_seconds_count{}") == 1  # step 0's callback -> step 1's create
    assert grew("kc_download_bytes_total{}") > 0
    assert value(after, "kc_chains{status=succeeded}") >= 1
    assert value(after, "kc_videos{state=archived}") >= 2
    assert f"kc_queue_depth{{queue={svc.prefix}queue}}" in after
    assert f"kc_queue_depth{{queue={svc.prefix}queue.archive}}" in after


def test_counters_survive_a_worker_restart(svc: Service) -> None:
    fresh(svc)
    svc.wait(start_chain(svc, steps=1)["id"])
    _, before = scrape(svc)
    # When the worker is stopped and started again
    svc.stack.kill("worker", signal.SIGTERM)
    svc.stack.start("worker", find_procfile()["worker"], svc.env)
    _, restarted = scrape(svc)
    # Then nothing it counted was lost
    for key in (ACCEPTED, CALLBACKS, TASKS, UNITS):
        assert value(restarted, key) == value(before, key) > 0, key
    # and the new worker adds to the same counters
    svc.wait(start_chain(svc, steps=1)["id"])
    _, after = scrape(svc)
    assert value(after, ACCEPTED) == value(before, ACCEPTED) + 1
    assert value(after, TASKS) == value(before, TASKS) + 1
    assert value(after, UNITS) == value(before, UNITS) + 1


def test_two_web_processes_add_to_the_same_counters(svc: Service) -> None:
    # Given a second web process on the same Redis
    port = free_port()
    web2 = svc.stack.start("web2", find_procfile()["web"], {**svc.env, "PORT": str(port)})
    other = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{other}/healthz", proc=web2)
        _, before = scrape(svc)
        # When each gets forged callbacks
        body = {"task_id": "t1", "task_status": "succeed"}
        for api, n in ((svc.api, 3), (other, 2)):
            for _ in range(n):
                reply = requests.post(f"{api}/callbacks/c1/0/forged", json=body, timeout=10)
                assert reply.status_code == 403
        # Then either one shows all five, and the worker's counts beside them
        for api in (svc.api, other):
            _, seen = scrape(svc, api)
            assert value(seen, FORBIDDEN) == value(before, FORBIDDEN) + 5
            assert value(seen, ACCEPTED) == value(before, ACCEPTED)
            assert value(seen, ACCEPTED) > 0  # counted by the worker, shown by both webs
    finally:
        svc.stack.kill("web2", signal.SIGTERM)


def test_account_reports_refused_creates(svc: Service) -> None:
    fresh(svc)
    before = svc.http.get(f"{svc.api}/account", timeout=10).json()
    # When the provider refuses a create once with 1303 (too many tasks at once)
    svc.faults(fail_next_creates={"count": 1, "http_status": 429, "code": 1303})
    final = svc.wait(start_chain(svc, steps=1)["id"], timeout=60)
    assert final["status"] == "succeeded"
    account = svc.http.get(f"{svc.api}/account", timeout=10).json()
    # Then it shows in the last hour and in all, and in /metrics
    assert account["refused_creates"]["last_hour"] == before["refused_creates"]["last_hour"] + 1
    assert account["refused_creates"]["total"] == before["refused_creates"]["total"] + 1
    assert set(account) == {"slots", "units_today", "budget", "refused_creates"}
    assert account["slots"] == {"in_use": 0, "limit": None}
    assert account["budget"] is None
    _, samples = scrape(svc)
    refused = "kc_creates_total{kind=video-extend,outcome=refused}"
    assert value(samples, refused) == account["refused_creates"]["total"]
