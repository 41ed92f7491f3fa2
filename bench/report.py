"""Figures, machine facts, the printed table and ``bench/results.json``."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import redis

RESULTS = Path(__file__).resolve().parent / "results.json"


@dataclass
class Figure:
    """One measured figure, its baseline from the same run, and its goal if it has one.

    ``ratio`` is ``value / baseline``. ``goal`` is a readable statement; ``met`` is None for
    figures that only inform.
    """

    bench: str
    name: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_name: str | None = None
    goal: str | None = None
    met: bool | None = None
    runs: list[float] = field(default_factory=list)
    note: str | None = None

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline == 0:
            return None
        return self.value / self.baseline

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ratio"] = self.ratio
        return data


@dataclass
class Section:
    """What one benchmark produced: figures, plus details worth keeping in the JSON."""

    name: str
    figures: list[Figure] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    foreign_cores: float | None = None
    steal_cores: float | None = None
    cpu_speed_ms: float | None = None
    error: str | None = None

    def add(self, name: str, value: float, unit: str, **rest: Any) -> Figure:
        figure = Figure(self.name, name, value, unit, **rest)
        self.figures.append(figure)
        return figure


# -- statistics ------------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by linear interpolation between closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: Iterable[float]) -> float:
    items = list(values)
    return statistics.median(items) if items else math.nan


# -- the machine -----------------------------------------------------------------------------
def cpu_speed_ms(repeats: int = 5) -> float:
    """Milliseconds a fixed pure-Python loop takes (median of ``repeats``), run while nothing
    of ours is busy. The machine is a shared virtual one: when this drifts between sections,
    the host gave us a slower or faster CPU, which no process census can see."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        total = 0
        for n in range(200_000):
            total += n * n % 7
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def tool_version(*command: str) -> str | None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (done.stdout or done.stderr).strip().splitlines()
    return text[0] if text else None


def machine_facts(redis_url: str) -> dict[str, Any]:
    client = redis.Redis.from_url(redis_url)
    try:
        redis_version = str(client.info("server")["redis_version"])
    except redis.RedisError as exc:
        redis_version = f"unavailable ({exc})"
    finally:
        client.close()
    return {
        "cores_logical": os.cpu_count(),
        "cores_physical": psutil.cpu_count(logical=False),
        "cpu_model": cpu_model(),
        "memory_gib": round(psutil.virtual_memory().total / 1024**3, 1),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "redis_version": redis_version,
        "wrk": tool_version("wrk", "--version"),
        "curl": tool_version("curl", "--version"),
        "load_average_at_start": list(os.getloadavg()),
        "cpu_speed_ms_at_start": round(cpu_speed_ms(), 2),
    }


@contextmanager
def foreign_load(own_pid: int, interval: float = 0.25) -> Iterator[dict[str, float]]:
    """Cores' worth of CPU used by other processes while the block ran.

    The machine is shared: a figure taken while something else kept a core busy is suspect.
    A census of every process every ``interval`` seconds tells this benchmark's processes
    (``own_pid`` and its descendants, remembered even after they are orphaned or killed)
    from the others; the others' CPU time grown over the block, over its wall time, is the
    foreign load. Kernel threads and the Redis server (shared, but working for us) are left
    out. The hypervisor's steal time is reported beside it.
    """
    out: dict[str, float] = {}
    census = _Census(own_pid)
    census.take()
    steal0 = _steal_seconds()
    start = time.monotonic()
    halt = threading.Event()

    def sample() -> None:
        while not halt.wait(interval):
            census.take()

    sampler = threading.Thread(target=sample, daemon=True, name="census")
    sampler.start()
    try:
        yield out
    finally:
        halt.set()
        sampler.join()
        census.take()
        wall = max(time.monotonic() - start, 1e-9)
        out["foreign_cores"] = census.foreign_seconds() / wall
        out["steal_cores"] = max(0.0, (_steal_seconds() - steal0) / wall)


class _Census:
    """CPU seconds per process, first and last seen, and whether it is one of ours."""

    def __init__(self, own_pid: int) -> None:
        self.own_pid = own_pid
        self.first: dict[tuple[int, float], float] = {}
        self.last: dict[tuple[int, float], float] = {}
        self.ours: set[tuple[int, float]] = set()
        self.started = time.time()

    def take(self) -> None:
        try:
            mine = {p.pid for p in psutil.Process(self.own_pid).children(recursive=True)}
        except psutil.Error:
            mine = set()
        mine.add(self.own_pid)
        for proc in psutil.process_iter(["name", "ppid", "create_time", "cpu_times"]):
            info = proc.info
            cpu = info.get("cpu_times")
            created = info.get("create_time")
            if cpu is None or created is None:
                continue
            key = (proc.pid, created)
            if proc.pid in mine or info.get("name") == "redis-server":
                self.ours.add(key)
            if proc.pid in (1, 2) or info.get("ppid") == 2:  # init, kernel threads
                continue
            total = cpu.user + cpu.system
            # A process started during the block counts from zero.
            self.first.setdefault(key, total if created < self.started else 0.0)
            self.last[key] = total

    def foreign_seconds(self) -> float:
        return sum(
            max(0.0, self.last[key] - self.first[key]) for key in self.last if key not in self.ours
        )


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds used so far by ``pid`` and its live descendants."""
    total = 0.0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    for proc in procs:
        try:
            cpu = proc.cpu_times()
        except psutil.Error:
            continue
        total += cpu.user + cpu.system
    return total


def _steal_seconds() -> float:
    """Time the hypervisor ran something else on this machine's virtual CPUs."""
    return float(getattr(psutil.cpu_times(), "steal", 0.0))


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def table(sections: Sequence[Section]) -> str:
    rows = [("bench", "figure", "value", "unit", "baseline", "ratio", "goal", "met")]
    for section in sections:
        if section.error:
            rows.append((section.name, "FAILED", section.error[:60], "", "", "", "", ""))
        for f in section.figures:
            met = "-" if f.met is None else ("yes" if f.met else "NO")
            base = _fmt(f.baseline) + (f" ({f.baseline_name})" if f.baseline_name else "")
            rows.append(
                (
                    f.bench,
                    f.name,
                    _fmt(f.value),
                    f.unit,
                    base if f.baseline is not None else "-",
                    _fmt(f.ratio),
                    f.goal or "-",
                    met,
                )
            )
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for number, row in enumerate(rows):
        cells = [
            str(c).rjust(w) if i in (2, 5) else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if number == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_results(
    path: Path, facts: dict[str, Any], sections: Sequence[Section], *, mode: str
) -> None:
    """Write this run's sections into ``path``, keeping the sections (and their figures) of
    earlier runs that this one did not run: ``--only NAME`` replaces NAME's figures alone.
    Each section records when it ran and in which mode."""
    now = datetime.now(UTC).isoformat(timespec="seconds")
    ran = {s.name for s in sections}
    kept_figures: list[dict[str, Any]] = []
    kept_sections: dict[str, Any] = {}
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError):
        earlier = {}
    if isinstance(earlier, dict):
        for name, section in (earlier.get("sections") or {}).items():
            if name not in ran and isinstance(section, dict):
                section.setdefault("timestamp", earlier.get("timestamp"))
                section.setdefault("mode", earlier.get("mode"))
                kept_sections[name] = section
        kept_figures = [
            f
            for f in earlier.get("figures") or []
            if isinstance(f, dict) and f.get("bench") in kept_sections
        ]
    figures = kept_figures + [f.as_dict() for s in sections for f in s.figures]
    data = {
        "timestamp": now,
        "mode": mode,
        "machine": facts,
        "figures": figures,
        "goals": {
            "met": sum(1 for f in figures if f.get("met") is True),
            "missed": sum(1 for f in figures if f.get("met") is False),
        },
        "sections": {
            **kept_sections,
            **{
                s.name: {
                    "timestamp": now,
                    "mode": mode,
                    "seconds": round(s.seconds, 1),
                    "foreign_cores": s.foreign_cores,
                    "steal_cores": s.steal_cores,
                    "cpu_speed_ms": s.cpu_speed_ms,
                    "error": s.error,
                    "details": s.details,
                }
                for s in sections
            },
        },
    }
    temp = path.with_suffix(".json.tmp")
    temp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(temp, path)
