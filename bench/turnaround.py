"""Step turnaround: from a step's callback reaching the web process to the next step's create
request reaching the provider.

How it is measured, with two clocks that are the same clock (one machine):
- the web process runs as ``bench.stamps:create_app``: the product's app behind a middleware
  that notes the wall-clock time each ``POST /callbacks/{chain}/{step}/...`` arrives, before
  routing, token check or body parsing;
- the fake gateway records ``created_at`` (ms, its wall clock) for each task when the create
  request is accepted, and the worker sends ``external_task_id = kc-{chain}-{step}``, so the
  gateway's task list (its own API) maps every create to its chain and step.

turnaround(step i) = created_at(step i+1) - first callback arrival of step i. With
``--delay 0`` the gateway sends the ``processing`` and ``succeed`` callbacks of a task at once,
and whichever arrives first leads the worker to query the task and find it finished, so the
first arrival is where the service's reaction starts. Everything between is the service:
enqueue, the worker's query, the state transition, the submit task, the create request.

Chains run in a few lanes (one chain at a time per lane) so that the figure is the latency of
the pipeline rather than queueing behind a saturated machine; a second, loaded run with more
chains at once shows how it degrades.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import requests

from bench.chains import FINISHED, chain_body, seed_videos
from bench.report import Section, percentile
from bench.stack import STAMPED_WEB, BenchService, start_service
from bench.stamps import STAMPS_PATH
from worker.core.chain import Chain

GOAL_P99_MS = 50.0
POLL_INTERVAL_S = 5.0
STEPS_PER_CHAIN = 30  # 29 turnarounds each; 5 s + 30 x 5 s stays under the 180 s cap
RACE_MS = 400.0  # a refresh that ran before the create reply was recorded waits 0.5 s


def run_lanes(
    service: BenchService, seeds: list[dict[str, Any]], *, chains: int, lanes: int, timeout: float
) -> list[str]:
    """``chains`` chains, ``lanes`` at a time, each lane starting its next when one ends."""
    done: list[str] = []
    lock = threading.Lock()
    counter = iter(range(chains))
    deadline = time.monotonic() + timeout
    errors: list[BaseException] = []

    def lane() -> None:
        session = service.api_session()
        try:
            while True:
                with lock:
                    number = next(counter, None)
                if number is None or time.monotonic() > deadline:
                    return
                body = chain_body(seeds[number % len(seeds)], STEPS_PER_CHAIN)
                reply = session.post(f"{service.api}/chains", json=body, timeout=30)
                reply.raise_for_status()
                chain_id = reply.json()["id"]
                key = f"{service.prefix}chain:{chain_id}"
                while time.monotonic() < deadline:
                    raw = service.redis.get(key)
                    if raw is not None and Chain.from_json(raw).status.value in FINISHED:
                        break
                    time.sleep(0.02)
                with lock:
                    done.append(chain_id)
        except BaseException as exc:
            errors.append(exc)
        finally:
            session.close()

    threads = [threading.Thread(target=lane, name=f"lane-{n}") for n in range(lanes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return done


def gateway_creates(service: BenchService) -> dict[tuple[str, int], float]:
    """(chain id, step) -> the gateway's created_at (seconds) of every extension task."""
    out: dict[tuple[str, int], float] = {}
    page = 1
    while True:
        reply = service.fake("GET", f"/kling/v1/videos/video-extend?pageNum={page}&pageSize=500")
        tasks = reply["data"]
        for task in tasks:
            external = (task.get("task_info") or {}).get("external_task_id") or ""
            _, _, rest = external.partition("-")
            chain_id, _, index = rest.rpartition("-")
            if chain_id and index.isdigit():
                out[(chain_id, int(index))] = task["created_at"] / 1000
        if len(tasks) < 500:
            return out
        page += 1


def turnarounds(
    stamps: list[list[Any]], creates: dict[tuple[str, int], float], chain_ids: set[str]
) -> tuple[list[float], list[float]]:
    """Turnarounds (ms) and, per step, how long after its create the first callback came."""
    first: dict[tuple[str, int], float] = {}
    for arrived, chain_id, index, _status in stamps:
        key = (chain_id, int(index))
        first[key] = min(first.get(key, arrived), arrived)
    samples, leads = [], []
    for (chain_id, index), created in creates.items():
        if chain_id not in chain_ids or (chain_id, index) not in first:
            continue
        leads.append((first[(chain_id, index)] - created) * 1000)
        following = creates.get((chain_id, index + 1))
        if following is not None:
            samples.append((following - first[(chain_id, index)]) * 1000)
    return samples, leads


def measure(
    root: Path, *, chains: int, lanes: int, timeout: float
) -> tuple[list[float], list[float], dict[str, Any]]:
    service = start_service(root, delay=0.0, web_command=STAMPED_WEB)
    try:
        seeds = seed_videos(service, min(chains, 20))
        started = time.monotonic()
        done = run_lanes(service, seeds, chains=chains, lanes=lanes, timeout=timeout)
        seconds = time.monotonic() - started
        stamps = requests.get(f"{service.api}{STAMPS_PATH}", timeout=30).json()
        creates = gateway_creates(service)
        stats = service.fake("GET", "/_fake/stats")
    finally:
        service.close()
    samples, leads = turnarounds(stamps, creates, set(done))
    by_status: dict[str, int] = defaultdict(int)
    for _, _, _, status in stamps:
        by_status[status] += 1
    info = {
        "chains": len(done),
        "lanes": lanes,
        "steps_per_chain": STEPS_PER_CHAIN,
        "seconds": round(seconds, 2),
        "steps_per_second": round(len(creates) / seconds, 1) if seconds else None,
        "samples": len(samples),
        "p50_ms": round(percentile(samples, 0.5), 2),
        "p90_ms": round(percentile(samples, 0.9), 2),
        "p99_ms": round(percentile(samples, 0.99), 2),
        "max_ms": round(max(samples), 2) if samples else None,
        "over_race_ms": sum(1 for s in samples if s >= RACE_MS),
        "callback_after_create_p50_ms": round(percentile(leads, 0.5), 2),
        "callback_after_create_p99_ms": round(percentile(leads, 0.99), 2),
        "callbacks_by_status": dict(by_status),
        "gateway_callbacks_sent": stats.get("callbacks_sent"),
    }
    return samples, leads, info


def run(root: Path, *, quick: bool) -> Section:
    section = Section("turnaround")
    # >= 500 turnarounds: 18 chains x 29. Quick mode keeps the count and drops the loaded run.
    chains = 18
    calm_samples, _, calm = measure(root / "calm", chains=chains, lanes=2, timeout=120)
    poll_wait_ms = POLL_INTERVAL_S / 2 * 1000
    p50, p99 = percentile(calm_samples, 0.5), percentile(calm_samples, 0.99)
    section.add(
        "step turnaround p50 (2 chains at once)",
        p50,
        "ms",
        baseline=poll_wait_ms,
        baseline_name="5 s poller: 2.5 s expected wait",
        note=f"{calm['samples']} steps",
    )
    section.add(
        "step turnaround p99 (2 chains at once)",
        p99,
        "ms",
        baseline=poll_wait_ms,
        baseline_name="5 s poller: 2.5 s expected wait",
        goal=f"<= {GOAL_P99_MS:.0f} ms",
        met=p99 <= GOAL_P99_MS,
        note=f"{calm['samples']} steps; {calm['over_race_ms']} waited >= {RACE_MS:.0f} ms",
    )
    section.details["calm"] = calm
    if not quick:
        loaded_samples, _, loaded = measure(root / "loaded", chains=24, lanes=12, timeout=180)
        section.add(
            "step turnaround p50 (12 chains at once)",
            percentile(loaded_samples, 0.5),
            "ms",
            baseline=poll_wait_ms,
            baseline_name="5 s poller: 2.5 s expected wait",
            note=f"{loaded['samples']} steps, machine saturated: mostly queueing",
        )
        section.add(
            "step turnaround p99 (12 chains at once)",
            percentile(loaded_samples, 0.99),
            "ms",
            baseline=poll_wait_ms,
            baseline_name="5 s poller: 2.5 s expected wait",
        )
        section.details["loaded"] = loaded
    section.details["poll_interval_s"] = POLL_INTERVAL_S
    return section
