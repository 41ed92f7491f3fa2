"""Celery tasks: thin wrappers that hand a ``Runner`` result back to Celery as a retry."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import cache
from typing import Any

import redis
from kombu.exceptions import OperationalError

from worker import wiring
from worker.archiver import Archiver
from worker.celery import app
from worker.core import retry
from worker.core.chain import ChainStatus, Outcome
from worker.outbound import notify as notifications
from worker.runner import Runner
from worker.settings import get_settings
from worker.state.chains import UnknownChain
from worker.tasknames import (
    ANNOUNCE_END,
    ARCHIVE_VIDEO,
    IMPORT_TASK,
    NOTIFY,
    REFRESH_STEP,
    SUBMIT_STEP,
    SWEEP,
)

log = logging.getLogger(__name__)


def enqueue(name: str, args: tuple[Any, ...]) -> None:
    app.send_task(name, args=args)


@cache
def state() -> wiring.State:
    return wiring.state(get_settings())


@cache
def archiver() -> Archiver:
    s = get_settings()
    return Archiver(s, s.storage(), state().chains, state().videos, s.provider(), enqueue)


@cache
def runner() -> Runner:
    s = get_settings()
    slots = wiring.slots(s, state())
    return Runner(s, state().chains, s.provider(), enqueue, archiver(), slots=slots)


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
        raise task.retry(countdown=retry.delay(retry.Kind.REDIS, attempt)) from exc
    _again(task, delay)


@app.task(bind=True, name=SUBMIT_STEP, max_retries=None)
def submit_step(self: Any, chain_id: str, index: int) -> None:
    r, req = runner(), self.request
    _run(self, lambda: r.submit(chain_id, index, owner=req.id, attempt=req.retries))


@app.task(bind=True, name=REFRESH_STEP, max_retries=None)
def refresh_step(self: Any, chain_id: str, index: int, candidate: str | None = None) -> None:
    r, req = runner(), self.request
    _run(self, lambda: r.refresh(chain_id, index, candidate=candidate, attempt=req.retries))


@app.task(bind=True, name=IMPORT_TASK, max_retries=None)
def import_task(self: Any, kind: str, task_id: str, origin: str) -> None:
    a, req = archiver(), self.request
    _run(self, lambda: a.archive_task(kind, task_id, origin, attempt=req.retries))


@app.task(bind=True, name=ARCHIVE_VIDEO, max_retries=None)
def archive_video(self: Any, video_id: str) -> None:
    a, req = archiver(), self.request
    _run(self, lambda: a.archive_video(video_id, owner=req.id, attempt=req.retries))


@app.task(bind=True, name=NOTIFY, max_retries=None)
def notify(self: Any, event: dict[str, Any]) -> None:
    """POST one event to NOTIFY_URL, signed per Standard Webhooks; ``retry.Kind.NOTIFY``'s
    attempts in all."""
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
        delay = retry.after(retry.Kind.NOTIFY, attempt, retry_after=exc.retry_after)
        if delay is None:
            log.error(
                "notification %s (%s) dropped after %d attempts: %s", e.id, e.type, attempt, exc
            )
            return
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


@app.task(bind=True, name=ANNOUNCE_END, max_retries=None)
def announce_end(self: Any, chain_id: str) -> None:
    """Announce the end of a chain that the web process ended (a cancel with nothing paid
    in flight): it builds no events itself. The event id is the end's own, so once."""

    def work() -> None:
        chain = state().chains.get(chain_id)
        if chain.status in (ChainStatus.SUCCEEDED, ChainStatus.FAILED, ChainStatus.CANCELLED):
            archiver().notify_end(Outcome(chain, ended=True))  # not when resumed since

    _run(self, work)


@app.task(name=SWEEP)
def sweep() -> int:
    return runner().sweep()
