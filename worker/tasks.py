"""Celery tasks: thin wrappers that hand a ``Runner`` result back to Celery as a retry."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import cache
from typing import Any

import redis
from kombu.exceptions import OperationalError

from worker import notify as notifications
from worker.archiver import ARCHIVE_RECORD_TASK, ARCHIVE_TASK_TASK, NOTIFY_TASK, Archiver
from worker.celery import app
from worker.download import backoff
from worker.runner import ARCHIVE_TASK, REFRESH_TASK, SUBMIT_TASK, Runner
from worker.settings import get_settings
from worker.store import Store, Timing, UnknownChain
from worker.videos import Videos

log = logging.getLogger(__name__)


def enqueue(name: str, args: tuple[Any, ...]) -> None:
    app.send_task(name, args=args)


@cache
def store() -> Store:
    s = get_settings()
    timing = Timing(
        poll_after=s.poll_after_seconds,
        submit_lease=s.submit_lease_seconds,
        archive_lease=s.archive_lease_seconds,
    )
    return Store(redis.Redis.from_url(s.redis_url), prefix=s.key_prefix, timing=timing)


@cache
def archiver() -> Archiver:
    s = get_settings()
    videos = Videos(store().redis, prefix=s.key_prefix)
    return Archiver(s, s.storage(), videos, s.provider(), enqueue)


@cache
def runner() -> Runner:
    s = get_settings()
    return Runner(s, store(), s.provider(), enqueue, archiver())


def _again(task: Any, delay: float | None) -> None:
    if delay is not None:
        # The limits live in the runner (deadlines, attempt caps); the task never gives up
        # on its own, hence max_retries=None on every task below.
        raise task.retry(countdown=delay)


def _run(task: Any, work: Callable[[], float | None]) -> None:
    try:
        delay = work()
    except UnknownChain as exc:
        # News about a chain this service does not hold (deleted, or another deployment's).
        log.warning("%s: no chain %s here; ignoring", task.name, exc)
        return
    except (redis.ConnectionError, redis.TimeoutError, OperationalError) as exc:
        # Redis went away mid-task (a restart, a failover). Run again as the same task: it
        # may re-take its own claims at once instead of waiting for their leases to run out.
        attempt = task.request.retries + 1
        log.warning("%s: Redis unavailable (%s); again shortly", task.name, exc)
        raise task.retry(countdown=backoff(attempt, base=1.0, cap=30.0)) from exc
    _again(task, delay)


@app.task(bind=True, name=SUBMIT_TASK, max_retries=None)
def submit_step(self: Any, chain_id: str, index: int) -> None:
    r, req = runner(), self.request
    _run(self, lambda: r.submit(chain_id, index, owner=req.id, attempt=req.retries))


@app.task(bind=True, name=REFRESH_TASK, max_retries=None)
def refresh_step(self: Any, chain_id: str, index: int, candidate: str | None = None) -> None:
    r, req = runner(), self.request
    _run(self, lambda: r.refresh(chain_id, index, candidate=candidate, attempt=req.retries))


@app.task(bind=True, name=ARCHIVE_TASK, max_retries=None)
def archive_video(self: Any, chain_id: str, video_id: str) -> None:
    r, req = runner(), self.request
    _run(self, lambda: r.archive(chain_id, video_id, owner=req.id, attempt=req.retries))


@app.task(bind=True, name=ARCHIVE_TASK_TASK, max_retries=None)
def archive_task(self: Any, kind: str, task_id: str, origin: str) -> None:
    a, req = archiver(), self.request
    _run(self, lambda: a.archive_task(kind, task_id, origin, attempt=req.retries))


@app.task(bind=True, name=ARCHIVE_RECORD_TASK, max_retries=None)
def archive_record(self: Any, video_id: str) -> None:
    a, req = archiver(), self.request
    _run(self, lambda: a.archive_video(video_id, owner=req.id, attempt=req.retries))


@app.task(bind=True, name=NOTIFY_TASK, max_retries=None)
def notify(self: Any, event: dict[str, Any]) -> None:
    """POST one event to NOTIFY_URL, signed per Standard Webhooks; MAX_ATTEMPTS in all."""
    s = get_settings()
    if s.notify_url is None:
        return  # notifications were switched off after the event was queued
    e = notifications.Event.from_dict(event)
    attempt = self.request.retries + 1
    try:
        status = notifications.deliver(str(s.notify_url), s.notify_key(), e)
    except notifications.DeliveryRejected as exc:
        log.error("notification %s (%s) refused: %s; not retried", e.id, e.type, exc)
    except notifications.DeliveryFailed as exc:
        if attempt >= notifications.MAX_ATTEMPTS:
            log.error(
                "notification %s (%s) dropped after %d attempts: %s", e.id, e.type, attempt, exc
            )
            return
        # Below the broker's one-hour visibility timeout, or Redis could deliver it twice.
        delay = notifications.retry_delay(attempt, exc, cap=3000.0)
        log.warning(
            "notification %s (%s) attempt %d: %s; again in %.0f s",
            e.id,
            e.type,
            attempt,
            exc,
            delay,
        )
        raise self.retry(countdown=delay) from exc
    else:
        log.info("notification %s (%s) delivered: HTTP %d", e.id, e.type, status)


@app.task(name="kc.sweep")
def sweep() -> int:
    return runner().sweep()
