"""Scale: 100, 1,000 and 5,000 chains of 5 steps through the whole service.

Each count gets a fresh service (fake gateway at ``--delay 0``, the Procfile's web, worker
and beat, Redis): videos are seeded through ``/_fake/videos``, the chains are created
concurrently through ``POST /chains`` and the run ends when every chain has ended and
archived its videos (``bench.chains``). Figures per count: wall time from the first create
to the last chain's end, steps per second, Redis memory per finished chain (MEMORY USAGE of
every key the run wrote, and the server's ``used_memory`` delta as a cross-check), and the
CPU each process spent per step. How the per-chain time and memory grow is the ratio of the
largest count to 100.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.chains import chain_body, run_chains, seed_videos
from bench.report import Section, cpu_speed_ms, foreign_load, tree_cpu_seconds
from bench.stack import BenchService, start_service

STEPS = 5
SEEDS = 20
GOAL_SECONDS_1000 = 60.0
GOAL_BYTES_PER_CHAIN = 20 * 1024
# "Linear or better": the per-chain time does not grow with the count. Repeated runs of the
# same count differ by up to ~10% on this shared machine, hence the allowance.
LINEAR_TOLERANCE = 1.10
KIB = 1024


def key_memory(service: BenchService) -> tuple[int, dict[str, int]]:
    """Bytes (MEMORY USAGE) of every key under the run's prefix, in total and by kind."""
    by_kind: dict[str, int] = defaultdict(int)
    names: list[bytes] = list(service.redis.scan_iter(f"{service.prefix}*", count=1000))
    total = 0
    for start in range(0, len(names), 500):
        batch = names[start : start + 500]
        with service.redis.pipeline(transaction=False) as pipe:
            for name in batch:
                pipe.memory_usage(name, samples=0)
            sizes = pipe.execute()
        for name, size in zip(batch, sizes, strict=True):
            rest = name.decode()[len(service.prefix) :]
            kind = rest.split(":", 1)[0] if ":" in rest else rest
            by_kind[kind] += int(size or 0)
            total += int(size or 0)
    return total, dict(by_kind)


def process_cpu(service: BenchService) -> dict[str, float]:
    out = {name: tree_cpu_seconds(proc.pid) for name, proc in service.stack.procs.items()}
    return out


def measure(root: Path, count: int, *, timeout: float) -> dict[str, Any]:
    service = start_service(root)
    try:
        seeds = seed_videos(service, SEEDS)
        memory0 = int(service.redis.info("memory")["used_memory"])
        cpu0 = process_cpu(service)
        bodies = [chain_body(seeds[n % len(seeds)], STEPS) for n in range(count)]
        with foreign_load(os.getpid()) as load:
            _, outcome = run_chains(service, bodies, timeout=timeout)
        cpu1 = process_cpu(service)
        memory1 = int(service.redis.info("memory")["used_memory"])
        keys_total, keys_by_kind = key_memory(service)
        stats = service.fake("GET", "/_fake/stats")
        queue_left = int(service.redis.llen(service.queue))
    finally:
        service.close()
    steps = count * STEPS
    cpu_ms = {
        name: round((cpu1.get(name, 0.0) - cpu0.get(name, 0.0)) / steps * 1000, 3) for name in cpu1
    }
    return {
        "chains": count,
        "steps": steps,
        "seconds": outcome.seconds,
        "create_seconds": outcome.create_seconds,
        "statuses": outcome.statuses,
        "steps_per_second": steps / outcome.seconds,
        "ms_per_chain": outcome.seconds / count * 1000,
        "redis_key_bytes_per_chain": keys_total / count,
        "redis_key_bytes_by_kind": keys_by_kind,
        "redis_used_memory_delta_per_chain": (memory1 - memory0) / count,
        "cpu_ms_per_step": cpu_ms,
        "cpu_ms_per_step_all": round(sum(cpu_ms.values()), 3),
        "cpu_speed_ms_after": round(cpu_speed_ms(), 2),
        "gateway_creates": stats.get("creates_total"),
        "gateway_callbacks_sent": stats.get("callbacks_sent"),
        "queue_left": queue_left,
        "foreign_cores": round(load.get("foreign_cores", 0.0), 2),
    }


def run(root: Path, *, quick: bool) -> Section:
    section = Section("scale")
    counts = (100, 1000) if quick else (100, 1000, 5000)
    runs: dict[int, dict[str, Any]] = {}
    for count in counts:
        runs[count] = measure(root / f"n{count}", count, timeout=120 + count * 0.3)
    smallest = runs[counts[0]]
    for count, r in runs.items():
        label = f"{count:,} x {STEPS}"
        ok = r["statuses"].get("succeeded", 0) == count
        section.add(
            f"wall time {label}",
            r["seconds"],
            "s",
            goal=f"<= {GOAL_SECONDS_1000:.0f} s" if count == 1000 else None,
            met=(r["seconds"] <= GOAL_SECONDS_1000 and ok) if count == 1000 else None,
            note=(f"statuses {r['statuses']}; other processes used {r['foreign_cores']} cores"),
        )
        section.add(f"steps/s {label}", r["steps_per_second"], "steps/s")
        section.add(
            f"CPU per step {label}",
            r["cpu_ms_per_step_all"],
            "ms",
            baseline=smallest["cpu_ms_per_step_all"] if count != counts[0] else None,
            baseline_name=f"at {counts[0]}" if count != counts[0] else None,
            note=(
                f"gateway, web, worker, beat: {r['cpu_ms_per_step']}; "
                f"CPU speed probe {r['cpu_speed_ms_after']} ms"
            ),
        )
        section.add(
            f"per-chain time {label}",
            r["ms_per_chain"],
            "ms",
            baseline=smallest["ms_per_chain"] if count != counts[0] else None,
            baseline_name=f"per-chain time at {counts[0]}" if count != counts[0] else None,
            goal=(
                f"<= {LINEAR_TOLERANCE:.2f} x (linear or better, within noise)"
                if count != counts[0]
                else None
            ),
            met=(
                r["ms_per_chain"] <= smallest["ms_per_chain"] * LINEAR_TOLERANCE
                if count != counts[0]
                else None
            ),
        )
        section.add(
            f"Redis per finished chain {label}",
            r["redis_key_bytes_per_chain"] / KIB,
            "KiB",
            baseline=(smallest["redis_key_bytes_per_chain"] / KIB) if count != counts[0] else None,
            baseline_name=f"at {counts[0]}" if count != counts[0] else None,
            goal=f"<= {GOAL_BYTES_PER_CHAIN // KIB} KiB",
            met=r["redis_key_bytes_per_chain"] <= GOAL_BYTES_PER_CHAIN,
            note=(
                "MEMORY USAGE of the run's keys; used_memory delta "
                f"{r['redis_used_memory_delta_per_chain'] / KIB:.2f} KiB/chain"
            ),
        )
    section.details = {
        "runs": {str(k): v for k, v in runs.items()},
        "steps_per_chain": STEPS,
        "seeded_videos": SEEDS,
        "worker_concurrency": 4,
        "gateway_delay_s": 0.0,
    }
    return section
