"""The Celery application: Redis broker, at-least-once delivery, idempotent tasks."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import IO, Any

from celery import Celery
from kombu.entity import Exchange, Queue

from worker import logs
from worker.queues import Queues
from worker.settings import get_settings
from worker.tasknames import SWEEP

settings = get_settings()
queues = Queues.named(settings.celery_queue)


def declared(name: str) -> Queue:
    """A queue bound under its own name, as Celery declares a queue it was not told of."""
    return Queue(name, Exchange(name), routing_key=name)  # type: ignore[no-untyped-call]


app = Celery("kling_chain", broker=settings.redis_url, include=["worker.tasks"])
app.conf.update(
    # kombu's Redis transport, with one client per channel instead of one per ack (worker.broker).
    broker_transport="worker.broker:Transport",
    # A task is acknowledged only when it finished; a worker killed mid-task hands it back.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    # Longer than any task runs (downloads give up and retry well within it) and than any
    # retry countdown, so the Redis transport never redelivers a task that is still running.
    broker_transport_options={"visibility_timeout": 3600},
    broker_connection_retry_on_startup=True,
    # Publishing (a retry, the next step) waits out a short Redis restart (~40 s) instead
    # of failing the task that is publishing.
    task_publish_retry_policy={
        "max_retries": 20,
        "interval_start": 0.5,
        "interval_step": 1.0,
        "interval_max": 3.0,
    },
    task_ignore_result=True,
    task_serializer="json",
    accept_content=["json"],
    # One queue per kind of work (worker.queues). A worker started without --queues
    # consumes all of them, in turn; dedicated workers take some each (README, "Processes").
    task_queues=[declared(name) for name in queues.all()],
    task_routes=queues.routes(),
    task_default_queue=queues.steps,
    worker_hijack_root_logger=False,
    # No fanout (pub/sub) channels: remote control, gossip and mingle are unused here, and
    # their channels are where kombu's Redis transport fails to recover from a broker restart.
    worker_enable_remote_control=False,
    beat_schedule={
        "sweep": {"task": SWEEP, "schedule": settings.sweep_seconds},
    },
)


def _json_logs(app: Celery) -> None:
    """LOG_FORMAT=json (worker.logs): every line the worker and beat print is a JSON object.

    The root logger writes JSON from the start, the handlers Celery adds later get the JSON
    formatter once it has set them up, its banners are left out (the same facts are logged),
    and the shutdown notes it writes to the terminal itself become JSON lines too.
    """
    import celery.apps.worker
    from celery import signals
    from celery._state import get_current_task

    service = "beat" if "beat" in sys.argv[1:] else "worker"

    def running_task() -> dict[str, Any]:
        task = get_current_task()
        if task is None or task.request.id is None:
            return {}
        return {"celery_task": task.name, "celery_task_id": task.request.id}

    def json_handlers(logger: logging.Logger, **_: Any) -> None:
        formatter = logs.use_json(service, loggers=("multiprocessing",), context=running_task)
        for handler in logger.handlers:
            handler.setFormatter(formatter)

    def quiet_worker(instance: Any, **_: Any) -> None:
        instance.quiet = True

    def say(msg: str, f: IO[str] | None = sys.__stderr__) -> None:
        # Called from signal handlers, like Celery's own: one os.write, no buffered stream.
        line = logs.json_line(service, msg.strip(), logger="celery.apps.worker") + "\n"
        with contextlib.suppress(OSError, ValueError, AttributeError):
            os.write((f or sys.__stderr__).fileno(), line.encode())  # type: ignore[union-attr]

    # From now on, also for what is logged (and warned) before Celery sets up its logging:
    # Celery keeps a root logger that has a handler.
    logs.use_json(service, context=running_task, replace=False)
    signals.after_setup_logger.connect(json_handlers, weak=False)
    signals.after_setup_task_logger.connect(json_handlers, weak=False)
    signals.celeryd_init.connect(quiet_worker, weak=False)
    celery.apps.worker.safe_say = say
    loud: Any = app.Beat

    class QuietBeat(loud):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **{**kwargs, "quiet": True})

    app.Beat = QuietBeat


if settings.log_format == "json":
    _json_logs(app)
