"""Slots: many chains against an account limited to N tasks at once, with and without
``KLING_CONCURRENCY=N``.

One run measures both: a fresh service per mode (fake gateway at ``--delay 2`` with
``account_concurrency`` N, the Procfile's web, worker and beat), the same chains created at
once, the run ending when every chain has ended and archived its videos. Figures per mode:
refused creates (the gateway's 1303s) and wall time, beside the ideal of an account kept
exactly full (tasks x task time / N). Goals: with slots, no refusal and a wall time within
1.3x of the ideal.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bench.chains import chain_body, run_chains, seed_videos
from bench.report import Section, foreign_load
from bench.stack import start_service

CHAINS = 12
STEPS = 2
LIMIT = 3
TASK_SECONDS = 2.0
GOAL_RATIO = 1.3


def ideal_seconds(chains: int = CHAINS, steps: int = STEPS) -> float:
    return chains * steps * TASK_SECONDS / LIMIT


def measure(root: Path, *, gated: bool, chains: int) -> dict[str, Any]:
    faults = f'{{"account_concurrency": {LIMIT}}}'
    if gated:
        service = start_service(
            root, delay=TASK_SECONDS, gateway_faults=faults, kling_concurrency=str(LIMIT)
        )
    else:
        service = start_service(root, delay=TASK_SECONDS, gateway_faults=faults)
    try:
        seeds = seed_videos(service, chains)
        bodies = [chain_body(seed, STEPS) for seed in seeds]
        with foreign_load(os.getpid()) as load:
            _, outcome = run_chains(service, bodies, timeout=300)
        stats = service.fake("GET", "/_fake/stats")
    finally:
        service.close()
    return {
        "seconds": outcome.seconds,
        "statuses": outcome.statuses,
        "refused": stats["concurrency_refusals"],
        "rejected_creates": stats["rejected_creates"],
        "creates": stats["creates_total"],
        "peak_in_flight": stats["peak_in_flight"],
        "foreign_cores": round(load.get("foreign_cores", 0.0), 2),
    }


def run(root: Path, *, quick: bool) -> Section:
    chains = CHAINS // 2 if quick else CHAINS
    ideal = ideal_seconds(chains)
    section = Section("slots")
    gated = measure(root / "gated", gated=True, chains=chains)
    open_ = measure(root / "open", gated=False, chains=chains)
    label = f"{chains} x {STEPS}, N={LIMIT}"
    print(
        f"slots: {label}, task {TASK_SECONDS:g} s, ideal {ideal:.1f} s\n"
        f"  {'':22}{'with slots':>12}{'without':>12}\n"
        f"  {'refused creates':22}{gated['refused']:>12}{open_['refused']:>12}\n"
        f"  {'wall time (s)':22}{gated['seconds']:>12.1f}{open_['seconds']:>12.1f}\n"
        f"  {'x ideal':22}{gated['seconds'] / ideal:>12.2f}{open_['seconds'] / ideal:>12.2f}\n"
        f"  {'peak tasks in flight':22}{gated['peak_in_flight']:>12}{open_['peak_in_flight']:>12}",
        flush=True,
    )
    ok = gated["statuses"].get("succeeded", 0) == chains
    section.add(
        f"refused creates {label}",
        gated["refused"],
        "creates",
        baseline=open_["refused"],
        baseline_name="without KLING_CONCURRENCY",
        goal="0",
        met=gated["refused"] == 0 and ok,
        note=f"statuses {gated['statuses']} (without: {open_['statuses']})",
    )
    section.add(
        f"wall time {label}",
        gated["seconds"],
        "s",
        baseline=open_["seconds"],
        baseline_name="without KLING_CONCURRENCY",
    )
    section.add(
        f"wall time vs ideal {label}",
        gated["seconds"] / ideal,
        "x",
        baseline=open_["seconds"] / ideal,
        baseline_name="without KLING_CONCURRENCY",
        goal=f"<= {GOAL_RATIO} x ideal ({ideal:.1f} s)",
        met=gated["seconds"] <= ideal * GOAL_RATIO and ok,
        note=(f"other processes used {gated['foreign_cores']} / {open_['foreign_cores']} cores"),
    )
    section.details = {
        "with_slots": gated,
        "without_slots": open_,
        "chains": chains,
        "steps_per_chain": STEPS,
        "account_concurrency": LIMIT,
        "task_seconds": TASK_SECONDS,
        "ideal_seconds": ideal,
    }
    return section
