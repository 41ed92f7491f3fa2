"""Paid work and downloads in separate queues: real Redis, Celery workers, uvicorn, gateway."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict

from chainctl.devstack import find_procfile
from tests.support import Service, start_service, stop_service
from worker.queues import Queues

log = logging.getLogger(__name__)
SLOTS = 2  # processes of the worker that downloads
SEED_SECONDS = 5.0  # 20,000 bytes: the test gateway makes 4,000 bytes per second of video
DOWNLOAD_SECONDS = 10.0  # each throttled file
THROTTLE = 4000 * SEED_SECONDS / DOWNLOAD_SECONDS
QUEUED = 3 * SLOTS  # more downloads than the processes of every worker together
# The throttled files are far slower than DOWNLOAD_MIN_BYTES_PER_SECOND: never cut them.


class SlowFilesAllowed(TypedDict):
    download_min_bytes_per_second: str


SLOW_FILES_ALLOWED: SlowFilesAllowed = {"download_min_bytes_per_second": "0"}


def wait_for(what: str, done: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s"
        time.sleep(0.05)


def wait_ready(svc: Service, name: str) -> None:
    """Until the Celery worker ``name`` logs that it takes tasks."""
    wait_for(f"{name} ready", lambda: " ready." in svc.stack.tail(name, 400), timeout=60)


def states(svc: Service) -> dict[str, str]:
    reply = svc.http.get(f"{svc.api}/archive?limit=500", timeout=5)
    reply.raise_for_status()
    return {v["video_id"]: v["state"] for v in reply.json()["videos"]}


def fill_download_slots(svc: Service) -> list[dict[str, Any]]:
    """Throttle every file and ask for QUEUED outside videos; returns once SLOTS of them
    are downloading."""
    svc.faults(download_bytes_per_second=THROTTLE)
    seeds = [svc.seed(SEED_SECONDS) for _ in range(QUEUED)]
    tasks = [{"task_id": s["task_id"], "kind": "text2video"} for s in seeds]
    reply = svc.http.post(f"{svc.api}/archive", json={"tasks": tasks}, timeout=10)
    assert reply.status_code == 202, reply.text
    wait_for("every slot downloading", lambda: svc.stats()["downloads_started"] >= SLOTS)
    return seeds


def start_chain_and_time_its_create(svc: Service) -> tuple[dict[str, Any], float, int]:
    """The chain, the seconds until the gateway had its first create, and how many
    downloads had started by then."""
    seed = svc.seed(5.0)
    began = time.monotonic()
    chain = svc.create({"video_id": seed["video_id"], "task_id": seed["task_id"], "steps": 1})
    while True:
        stats = svc.stats()
        if stats["creates_by_parent"].get(seed["video_id"]):
            delay, started = time.monotonic() - began, stats["downloads_started"]
            log.info("first create after %.2f s, %d downloads started by then", delay, started)
            return chain, delay, started
        assert time.monotonic() - began < 60, "the step was never submitted"
        time.sleep(0.02)


def everything_finishes(svc: Service, chain: dict[str, Any], seeds: list[dict[str, Any]]) -> None:
    svc.faults(download_bytes_per_second=None)  # the files still in flight keep their pace
    final = svc.wait(chain["id"], timeout=60)
    assert final["status"] == "succeeded", final
    ids = {s["video_id"] for s in seeds}
    wait_for("every video archived", lambda: {states(svc).get(i) for i in ids} == {"archived"})


def test_a_step_is_submitted_at_once_while_every_download_slot_is_busy(
    tmp_path: Path, redis_url: str
) -> None:
    svc = start_service(tmp_path, redis_url, processes=("web", "beat"), **SLOW_FILES_ALLOWED)
    try:
        # Given the split of README "Processes": the Procfile's worker line twice, once for
        # everything but downloads and once, with SLOTS processes, for the downloads
        queues = Queues.named(svc.env["CELERY_QUEUE"])
        rest = ",".join((queues.steps, queues.imports, queues.notify))
        command = find_procfile()["worker"]
        svc.stack.start("worker", command, {**svc.env, "WORKER_QUEUES": rest})
        svc.stack.start(
            "downloads",
            command,
            {**svc.env, "WORKER_QUEUES": queues.archive, "WORKER_CONCURRENCY": str(SLOTS)},
        )
        wait_ready(svc, "worker")
        wait_ready(svc, "downloads")
        # and every download slot busy with a throttled file, more files queued behind them
        seeds = fill_download_slots(svc)

        # When a chain starts
        chain, delay, started = start_chain_and_time_its_create(svc)

        # Then its first step is created at once, while the downloads are still in flight
        assert delay < 3.0, f"the first create took {delay:.1f} s"
        assert started == SLOTS
        archived = {i for i, state in states(svc).items() if state == "archived"}
        assert not archived & {s["video_id"] for s in seeds}
        # and the chain and every download finish once the files come faster
        everything_finishes(svc, chain, seeds)
    finally:
        stop_service(svc)


def test_the_one_worker_runs_every_queue_and_a_step_goes_before_queued_downloads(
    tmp_path: Path, redis_url: str
) -> None:
    # Given the Procfile as written: one worker (SLOTS processes) consuming every queue,
    # every process busy with a throttled file and more files queued behind them
    svc = start_service(tmp_path, redis_url, worker_concurrency=str(SLOTS), **SLOW_FILES_ALLOWED)
    try:
        wait_ready(svc, "worker")
        seeds = fill_download_slots(svc)

        # When a chain starts
        chain, delay, started = start_chain_and_time_its_create(svc)

        # Then its step waits for a process (each was downloading), but not for the queued
        # files: the worker takes its queues in turn
        assert started < QUEUED, f"the step went after every download ({delay:.1f} s)"
        # and the one worker archives every video and finishes the chain
        everything_finishes(svc, chain, seeds)
    finally:
        stop_service(svc)
