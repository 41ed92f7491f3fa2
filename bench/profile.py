"""Profile of the worker while chains run through the whole service.

The slowest path of the service at scale is the worker: it spends most of the CPU per step
(see the scale figures, ``cpu_ms_per_step``). This runs the worker under pyinstrument
(``bench.profiled_worker``: the prefork pool as the Procfile runs it, a profiler in the main
process and one in each child), pushes chains of 5 steps through, stops the worker with a warm
shutdown and reads the saved sessions back.

Reported: where the pool children's time goes while they run tasks (inclusive time of the
service's own functions, counted once per stack), the frames with the most self time, and the
main process's (Celery's consumer) self time. The full text renderings go to
``bench/profile-worker.txt``. Times are wall-clock samples; on a saturated 2-core machine a
frame waiting for a socket is often waiting for another process's CPU.
"""

from __future__ import annotations

import signal
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyinstrument.frame import Frame
from pyinstrument.renderers import ConsoleRenderer
from pyinstrument.session import Session

from bench.chains import chain_body, run_chains, seed_videos
from bench.report import Section
from bench.stack import start_service, wait_worker_ready

OUTPUT = Path(__file__).resolve().parent / "profile-worker.txt"
PRODUCT = ("worker/", "kling/", "webhook/")
TOP = 15


BLOCKING = (
    "read  ",
    "socket.sendall  ",
    "socket.recv  ",
    "socket.recv_into  ",
    "socket.connect  ",
    "fsync  ",
    "epoll.poll  ",
    "poll  ",
    "select  ",
    "sleep  ",
    "waitpid  ",
    "lock.acquire  ",
    "Connection._recv  billiard/",
    "[self]  billiard/",
)
# Thin wrappers that would only repeat their callee's time: the Celery task bodies, lambdas,
# the runner's transition-and-notify and the client's re-authenticating call.
WRAPPER_FILES = ("worker/tasks.py",)
WRAPPER_FUNCTIONS = frozenset({"<lambda>", "_apply", "_call"})


def _label(frame: Frame) -> str:
    function = f"{frame.class_name}.{frame.function}" if frame.class_name else frame.function
    return f"{function}  {frame.file_path_short}:{frame.line_no}"


def _group(frame: Frame, parent_group: str) -> str:
    """Which code a frame belongs to: the product, a library (first path part), or the
    caller's group for built-ins."""
    path = frame.file_path_short or ""
    if path.startswith("<"):
        return parent_group
    first = path.split("/", 1)[0]
    if first in ("worker", "kling", "webhook"):
        return "product (worker, kling, webhook)"
    if first in ("celery", "kombu", "billiard", "vine", "amqp"):
        return "celery / kombu / billiard"
    if first in ("requests", "urllib3", "http", "email", "urllib", "socket.py", "ssl.py"):
        return "HTTP client (requests, urllib3, http.client, urllib)"
    if first == "redis":
        return "redis-py"
    if first in ("copy.py", "dataclasses.py"):
        return "copy / dataclasses (deepcopy, asdict)"
    if first == "json":
        return "json"
    return first.removesuffix(".py")


@dataclass
class Aggregate:
    inclusive: dict[str, float]  # outermost occurrence per stack
    self_time: dict[str, float]
    by_group: dict[str, float]  # self time of non-blocking frames by code group
    in_tasks: float  # inside Celery's trace_task


def aggregate(root: Frame) -> Aggregate:
    inclusive: dict[str, float] = defaultdict(float)
    self_time: dict[str, float] = defaultdict(float)
    by_group: dict[str, float] = defaultdict(float)
    active: dict[str, int] = defaultdict(int)
    in_tasks = 0.0

    def walk(frame: Frame, parent: Frame | None, parent_group: str) -> None:
        nonlocal in_tasks
        if frame.is_synthetic:
            if parent is not None:
                name = _label(parent)
                self_time[name] += frame.time
                if not name.startswith(BLOCKING):
                    by_group[parent_group] += frame.time
            return
        name = _label(frame)
        group = _group(frame, parent_group)
        if active[name] == 0:
            inclusive[name] += frame.time
            if frame.function == "trace_task":
                in_tasks += frame.time
        if not frame.children:
            self_time[name] += frame.time
            if not name.startswith(BLOCKING):
                by_group[group] += frame.time
        active[name] += 1
        for child in frame.children:
            walk(child, frame, group)
        active[name] -= 1

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    walk(root, None, "other")
    return Aggregate(dict(inclusive), dict(self_time), dict(by_group), in_tasks)


def _combined(files: list[Path]) -> Session | None:
    session: Session | None = None
    for path in files:
        loaded = Session.load(str(path))
        session = loaded if session is None else Session.combine(session, loaded)
    return session


def _top(
    values: dict[str, float], *, total: float, only_product: bool = False, on_cpu: bool = False
) -> list[dict[str, Any]]:
    items = [
        (name, t)
        for name, t in values.items()
        if (not only_product or _is_product(name)) and (not on_cpu or not name.startswith(BLOCKING))
    ]
    items.sort(key=lambda item: item[1], reverse=True)
    return [
        {"frame": name, "seconds": round(t, 3), "share": round(t / total, 4)}
        for name, t in items[:TOP]
    ]


def _is_product(name: str) -> bool:
    function, where = name.split("  ", 1)
    return (
        where.startswith(PRODUCT)
        and not where.startswith(WRAPPER_FILES)
        and function.rpartition(".")[2] not in WRAPPER_FUNCTIONS
    )


def run(root: Path, *, quick: bool) -> Section:
    section = Section("profile")
    chains = 100 if quick else 200
    sessions_dir = root / "sessions"
    service = start_service(root, processes=("web", "beat"))
    try:
        command = [
            sys.executable,
            "-m",
            "bench.profiled_worker",
            str(sessions_dir),
            "--loglevel=INFO",
            f"--concurrency={service.env['WORKER_CONCURRENCY']}",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
        service.stack.start("worker", command, service.env)
        wait_worker_ready(service.stack)
        seeds = seed_videos(service, 20)
        bodies = [chain_body(seeds[n % len(seeds)], 5) for n in range(chains)]
        _, outcome = run_chains(service, bodies, timeout=300)
        service.stack.kill("worker", signal.SIGTERM)  # warm shutdown: the sessions are saved
    finally:
        service.close()

    children = _combined(sorted(sessions_dir.glob("child-*.pyisession")))
    main = _combined(sorted(sessions_dir.glob("main-*.pyisession")))
    if children is None or main is None:
        section.error = f"no profile sessions were saved in {sessions_dir}"
        return section
    children_root, main_root = children.root_frame(), main.root_frame()
    if children_root is None or main_root is None:
        section.error = "the profile sessions hold no samples"
        return section
    kids, boss = aggregate(children_root), aggregate(main_root)
    total = kids.in_tasks or children.duration
    on_cpu_total = sum(kids.by_group.values()) or 1.0
    top_product = _top(kids.inclusive, total=total, only_product=True)
    top_cpu = _top(kids.self_time, total=on_cpu_total, on_cpu=True)
    main_cpu_total = sum(boss.by_group.values()) or 1.0
    main_top = _top(boss.self_time, total=main_cpu_total, on_cpu=True)
    groups = sorted(kids.by_group.items(), key=lambda item: item[1], reverse=True)
    for entry in top_product[:5]:
        section.add(
            f"task time in {entry['frame'].split('  ')[0]}",
            entry["share"] * 100,
            "%",
            note=entry["frame"],
        )
    for group, seconds in groups[:5]:
        section.add(f"on-CPU samples in {group}", seconds / on_cpu_total * 100, "%")
    section.add(
        "profiled run wall time",
        outcome.seconds,
        "s",
        note=f"{chains} chains x 5 steps under the profiler (sampling every 1 ms)",
    )
    renderer = ConsoleRenderer(unicode=False, color=False, show_all=False, short_mode=True)
    flat = ConsoleRenderer(unicode=False, color=False, flat=True, show_all=True, short_mode=True)
    report = (
        f"Worker profile: {chains} chains x 5 steps, prefork pool "
        f"(concurrency {service.env['WORKER_CONCURRENCY']}), fake gateway at delay 0.\n"
        f"Pool children: {children.duration:.1f} s sampled, {kids.in_tasks:.1f} s inside tasks, "
        f"{children.cpu_time:.1f} s CPU.\nMain process: {main.duration:.1f} s sampled, "
        f"{main.cpu_time:.1f} s CPU.\n\n"
        "== pool children: call tree ==\n"
        + renderer.render(children)
        + "\n== pool children: self time ==\n"
        + flat.render(children)[:20000]
        + "\n== main process (consumer): self time ==\n"
        + flat.render(main)[:10000]
    )
    # Paths relative to the repository: the report is committed, this machine's are not.
    OUTPUT.write_text(report.replace(f"{OUTPUT.parent.parent}/", ""))
    section.details = {
        "chains": chains,
        "children_sampled_s": round(children.duration, 2),
        "children_in_tasks_s": round(kids.in_tasks, 2),
        "children_cpu_s": round(children.cpu_time, 2),
        "main_sampled_s": round(main.duration, 2),
        "main_cpu_s": round(main.cpu_time, 2),
        "top_product_inclusive": top_product,
        "top_on_cpu_self": top_cpu,
        "on_cpu_by_group": {g: round(t / on_cpu_total, 4) for g, t in groups},
        "main_top_on_cpu_self": main_top,
        "main_on_cpu_by_group": {
            g: round(t / main_cpu_total, 4)
            for g, t in sorted(boss.by_group.items(), key=lambda item: item[1], reverse=True)
        },
        "rendered": f"bench/{OUTPUT.name}",
        "statuses": outcome.statuses,
    }
    return section
