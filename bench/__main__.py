"""``python -m bench [--quick] [--only NAME ...]``: run the benchmarks, print a table, write
``bench/results.json``.

Benchmarks, in order: ingest (callbacks/s), turnaround (callback -> next create), download
(archive MiB/s and RSS), scale (100 / 1,000 / 5,000 chains), profile (the worker under
pyinstrument), slots (``KLING_CONCURRENCY`` against an account limited to N tasks), polling
(adaptive polling against a fixed 5 s poller, callbacks lost). Each
starts the processes it needs on loopback ports and stops them; Redis keys
are private to each run (``BENCH_REDIS_URL``, default database 12) and removed afterwards.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from bench import download, ingest, polling, profile, scale, slots, turnaround
from bench.report import (
    RESULTS,
    Section,
    cpu_speed_ms,
    foreign_load,
    machine_facts,
    table,
    write_results,
)
from bench.stack import REDIS_URL

Bench = Callable[..., Section]
BENCHES: dict[str, Bench] = {
    "ingest": ingest.run,
    "turnaround": turnaround.run,
    "download": download.run,
    "scale": scale.run,
    "profile": profile.run,
    "slots": slots.run,
    "polling": polling.run,
}
DISTURBED_CORES = 0.3  # other processes used this much CPU on average: rerun


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="fewer rounds; scale runs 100 and 1,000 chains only"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(BENCHES),
        metavar="NAME",
        help=f"run only this benchmark (repeatable): {', '.join(BENCHES)}",
    )
    parser.add_argument(
        "--output", type=Path, default=RESULTS, help=f"results file (default {RESULTS})"
    )
    parser.add_argument("--keep", action="store_true", help="keep the logs and temp files")
    return parser.parse_args(argv)


def _exit_on(signum: int, _frame: object) -> None:
    """SIGTERM/SIGHUP as an exit, so each benchmark's ``finally`` stops the processes it
    started (they are in process groups of their own and would run on, loading the machine
    and the benchmark database)."""
    sys.exit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _exit_on)
    names = args.only or list(BENCHES)
    mode = "quick" if args.quick else "full"
    root = Path(tempfile.mkdtemp(prefix="kc-bench-"))
    facts = machine_facts(REDIS_URL)
    print(
        f"bench: {mode} run of {', '.join(names)} on {facts['cores_logical']} cores "
        f"({facts['cpu_model']}), Python {facts['python']}, Redis {facts['redis_version']}; "
        f"load average {facts['load_average_at_start'][0]:.2f}; work dir {root}",
        flush=True,
    )
    sections: list[Section] = []
    started = time.monotonic()
    for name in names:
        print(f"bench: {name} ...", flush=True)
        speed = cpu_speed_ms()
        began = time.monotonic()
        with foreign_load(os.getpid()) as load:
            try:
                section = BENCHES[name](root / name, quick=args.quick)
            except Exception as exc:
                traceback.print_exc()
                section = Section(name, error=f"{type(exc).__name__}: {exc}")
        section.seconds = time.monotonic() - began
        section.foreign_cores = round(load["foreign_cores"], 2)
        section.steal_cores = round(load["steal_cores"], 2)
        section.cpu_speed_ms = round(speed, 2)
        sections.append(section)
        warning = ""
        if section.foreign_cores > DISTURBED_CORES:
            warning = f"; DISTURBED: other processes used {section.foreign_cores} cores"
        print(f"bench: {name} done in {section.seconds:.0f} s{warning}", flush=True)
        write_results(args.output, facts, sections, mode=mode)
    print()
    print(table(sections))
    print(f"\nbench: {mode} run took {time.monotonic() - started:.0f} s; results in {args.output}")
    disturbed = [s.name for s in sections if (s.foreign_cores or 0) > DISTURBED_CORES]
    if disturbed:
        print(f"bench: other load during {', '.join(disturbed)}: rerun those for clean figures")
    if args.keep:
        print(f"bench: logs and temp files kept in {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if any(s.error for s in sections) else 0


if __name__ == "__main__":
    sys.exit(main())
