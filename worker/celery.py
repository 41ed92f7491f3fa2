"""The Celery application: Redis broker, at-least-once delivery, idempotent tasks."""

from __future__ import annotations

from celery import Celery
from kombu.entity import Exchange, Queue

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
