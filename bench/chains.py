"""Driving chains through a running service: seed videos, create chains, wait for the end.

Chains are created through the HTTP API (``POST /chains``) from several threads. The end is
detected from Redis: the store's ``due`` sorted set (the work chains are owed) is empty once
every chain has ended, and the archive's deadline set (its pending videos) once their videos
are archived; the chain documents are then read back and their status taken from the
product's own ``Chain.status``, which is the final word.
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from bench.stack import BenchService
from worker.core.chain import Chain, ChainStatus

FINISHED = frozenset({ChainStatus.SUCCEEDED.value, ChainStatus.FAILED.value})
CREATE_THREADS = 8
FALLBACK_SECONDS = 5.0  # the read regardless of the schedule: at least this often...
FALLBACK_SHARE = 0.01  # ...unless that would spend more than this share of the time on it


@dataclass(frozen=True)
class Outcome:
    created: int
    create_seconds: float
    statuses: dict[str, int]
    seconds: float  # from the first create to the moment every chain had ended

    @property
    def finished(self) -> int:
        return sum(n for s, n in self.statuses.items() if s in FINISHED)


def seed_videos(service: BenchService, count: int, duration: float = 5.0) -> list[dict[str, Any]]:
    return [service.seed(duration) for _ in range(count)]


def chain_body(seed: dict[str, Any], steps: int) -> dict[str, Any]:
    return {
        "video_id": seed["video_id"],
        "task_id": seed["task_id"],
        "source_duration": float(seed["duration"]),
        "steps": steps,
        "prompt": "the camera keeps drifting forward",
    }


def create_chains(
    service: BenchService, bodies: list[dict[str, Any]], *, threads: int = CREATE_THREADS
) -> list[str]:
    """POST every body to /chains from ``threads`` threads; the chain ids, in order."""
    sessions = [service.api_session() for _ in range(threads)]

    def create(item: tuple[int, dict[str, Any]]) -> str:
        number, body = item
        reply = sessions[number % threads].post(f"{service.api}/chains", json=body, timeout=60)
        if reply.status_code != 202:
            raise RuntimeError(f"POST /chains answered {reply.status_code}: {reply.text[:300]}")
        chain_id: str = reply.json()["id"]
        return chain_id

    try:
        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(create, enumerate(bodies)))
    finally:
        for session in sessions:
            session.close()


def statuses(service: BenchService, chain_ids: list[str]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for start in range(0, len(chain_ids), 500):
        keys = [f"{service.prefix}chain:{c}" for c in chain_ids[start : start + 500]]
        for raw in service.redis.mget(keys):
            counts["missing" if raw is None else Chain.from_json(raw).status.value] += 1
    return counts


def wait_finished(
    service: BenchService, chain_ids: list[str], *, started: float, timeout: float
) -> tuple[float, Counter[str]]:
    """Seconds from ``started`` (monotonic) until every chain ended, and their statuses."""
    due, pending = f"{service.prefix}due", f"{service.prefix}videos:deadline"
    deadline = started + timeout
    last_full = -1.0
    every = FALLBACK_SECONDS
    while True:
        now = time.monotonic()
        idle = service.redis.zcard(due) == 0 and service.redis.zcard(pending) == 0
        # Read every chain back when the owed work looks done (at most twice a second) and,
        # in case the schedule's key ever changes, every so often regardless.
        if (idle and now - last_full >= 0.5) or now - max(last_full, started) >= every:
            counts = statuses(service, chain_ids)
            last_full = time.monotonic()
            # The read shares the cores with the service it measures, and costs in proportion
            # to the chains: it must not grow into a load that slows the large runs alone.
            every = max(FALLBACK_SECONDS, (last_full - now) / FALLBACK_SHARE)
            if sum(n for s, n in counts.items() if s in FINISHED) == len(chain_ids):
                return (now if idle else last_full) - started, counts
        if now > deadline:
            raise TimeoutError(
                f"{len(chain_ids)} chains not finished after {timeout:.0f} s: "
                f"{dict(statuses(service, chain_ids))}\n{service.logs()}"
            )
        time.sleep(0.05)


def run_chains(
    service: BenchService,
    bodies: list[dict[str, Any]],
    *,
    timeout: float,
) -> tuple[list[str], Outcome]:
    started = time.monotonic()
    chain_ids = create_chains(service, bodies)
    created = time.monotonic() - started
    seconds, counts = wait_finished(service, chain_ids, started=started, timeout=timeout)
    return chain_ids, Outcome(len(chain_ids), created, dict(counts), seconds)
