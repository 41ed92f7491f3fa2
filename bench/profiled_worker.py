"""The Celery worker under pyinstrument: the main process and every prefork child.

``python -m bench.profiled_worker OUT_DIR [celery worker options...]`` runs
``celery -A worker worker OPTIONS`` with a sampling profiler in the main process (receiving
and dispatching messages) and in each pool child (running the tasks), so the profile shows
the same prefork pool the Procfile runs, not a ``--pool solo`` stand-in. Each process writes
``OUT_DIR/{main,child}-{pid}.pyisession`` when it exits (warm shutdown: SIGTERM or SIGINT).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from celery.signals import worker_process_init, worker_process_shutdown
from pyinstrument import Profiler

INTERVAL = 0.001


class _Profilers:
    main: Profiler | None = None  # inherited by each forked child, which stops it unsaved
    child: Profiler | None = None


def _save(profiler: Profiler, out: Path, role: str) -> None:
    session = profiler.last_session
    if session is not None:
        session.save(str(out / f"{role}-{os.getpid()}.pyisession"))


def main(argv: list[str]) -> int:
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)

    def _start(**_: Any) -> None:
        if _Profilers.main is not None and _Profilers.main.is_running:
            _Profilers.main.stop()
        _Profilers.child = Profiler(interval=INTERVAL, async_mode="disabled")
        _Profilers.child.start()

    def _stop(**_: Any) -> None:
        child = _Profilers.child
        if child is not None and child.is_running:
            child.stop()
            _save(child, out, "child")

    worker_process_init.connect(_start, weak=False)
    worker_process_shutdown.connect(_stop, weak=False)

    from worker.celery import app

    profiler = _Profilers.main = Profiler(interval=INTERVAL, async_mode="disabled")
    profiler.start()
    try:
        app.worker_main(["worker", *argv[1:]])
    except SystemExit:
        pass
    finally:
        profiler.stop()
        _save(profiler, out, "main")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
