"""Celery tasks: thin wrappers that hand a ``Runner`` result back to Celery as a retry."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import cache
from typing import Any

import redis
from celery import signals
from kombu.exceptions import OperationalError

from worker import wiring
from worker.archiver import Archiver
from worker.celery import app
from worker.core import polling, retry
from worker.core.chain import ChainStatus, Outcome
from worker.outbound import notify as notifications
from worker.outbound.urls import display
from worker.publish import Publisher
from worker.runner import Runner
from worker.settings import ConfigError, get_settings
from worker.state.chains import UnknownChain
from worker.state.keys import Keys
from worker.state.polling import CallbackSeen
from worker.tasknames import (
    ANNOUNCE_END,
    ARCHIVE_VIDEO,
    IMPORT_TASK,
    NOTIFY,
    REFRESH_STEP,
    SUBMIT_STEP,
    SUPERSEDE,
    SWEEP,
)

log = logging.getLogger(__name__)


def enqueue(name: str, args: tuple[Any, ...]) -> None:
    publisher().publish_now(name, args)


@cache
def publisher() -> Publisher:
    """Tasks sent as one LPUSH each on the state's Redis (the broker), from templates Celery
    made (``worker.publish``); Celery's ``send_task`` for any it could not make."""
    return Publisher(app, state().redis, lambda name, args: app.send_task(name, args=args))


def later(name: str, args: tuple[Any, ...], countdown: float) -> None:
    app.send_task(name, args=args, countdown=countdown)


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
    budget = wiring.budget(s, state())
    return Runner(
        s,
        state().chains,
        s.provider(),
        enqueue,
        archiver(),
        slots=slots,
        budget=budget,
        later=later,
    )


def _again(task: Any, delay: float | None) -> None:
    if delay is not None:
        # The limits live in the runner (deadlines, attempt caps); the task never gives up
        # on its own, hence max_retries=None on every task below.
        raise task.retry(countdown=delay)


def _run(task: Any, work: Callable[[], float | None]) -> None:
    # What an earlier task read or wrote of a chain is no hint for this one: other
    # processes have likely changed it since (Store._remember).
    state().chains.forget()
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
def refresh_step(
    self: Any,
    chain_id: str,
    index: int,
    candidate: str | None = None,
    planned: float | None = None,
    reported: str | None = None,
) -> None:
    """``planned``: a poll a query planned (``Runner._plan_poll``); a Celery retry keeps it.
    ``reported``: the status a callback claimed (``Runner.refresh``)."""
    r, req = runner(), self.request
    _run(
        self,
        lambda: r.refresh(
            chain_id,
            index,
            candidate=candidate,
            attempt=req.retries,
            planned=planned,
            reported=reported,
            owner=req.id,
        ),
    )


@app.task(bind=True, name=IMPORT_TASK, max_retries=None)
def import_task(self: Any, kind: str, task_id: str, origin: str) -> None:
    a, req = archiver(), self.request
    _run(self, lambda: a.archive_task(kind, task_id, origin, attempt=req.retries))


@app.task(bind=True, name=ARCHIVE_VIDEO, max_retries=None)
def archive_video(self: Any, video_id: str) -> None:
    a, req = archiver(), self.request
    _run(self, lambda: a.archive_video(video_id, owner=req.id, attempt=req.retries))


@app.task(bind=True, name=SUPERSEDE, max_retries=None)
def supersede(self: Any, chain_id: str) -> None:
    """ARCHIVE_KEEP=final: delete the files the succeeded chain's final video supersedes."""
    a, req = archiver(), self.request
    _run(self, lambda: a.supersede(chain_id, attempt=req.retries))


@app.task(bind=True, name=NOTIFY, max_retries=None)
def notify(self: Any, event: dict[str, Any], url: str | None = None) -> None:
    """POST one event to one destination, signed per Standard Webhooks with NOTIFY_SECRET;
    ``retry.Kind.NOTIFY``'s attempts in all.

    Without ``url``, to NOTIFY_URL (the operator's: any address). With it, to a chain's own
    ``webhook_url``, which a caller supplied: through the address guard, so an internal
    address ALLOW_PRIVATE_HOSTS does not name is refused, and not retried."""
    s = get_settings()
    if url is None and s.notify_url is None:
        return  # notifications were switched off after the event was queued
    e = notifications.Event.from_dict(event)
    to = "NOTIFY_URL" if url is None else display(url)  # no query string: it may hold a token
    attempt = self.request.retries + 1
    try:
        secret = s.notify_key()
    except ConfigError as exc:  # the secret was removed or broken after the event was queued
        log.error("notification %s (%s) to %s not sent: %s", e.id, e.type, to, exc)
        return
    try:
        if url is None:
            status = notifications.deliver(str(s.notify_url), secret, e)
        else:
            status = notifications.deliver(url, secret, e, allow=s.allow_private_hosts)
    except notifications.DeliveryRejected as exc:
        log.error("notification %s (%s) to %s refused: %s; not retried", e.id, e.type, to, exc)
    except notifications.DeliveryFailed as exc:
        delay = retry.after(retry.Kind.NOTIFY, attempt, retry_after=exc.retry_after)
        if delay is None:
            log.error(
                "notification %s (%s) to %s dropped after %d attempts: %s",
                e.id,
                e.type,
                to,
                attempt,
                exc,
            )
            return
        log.warning(
            "notification %s (%s) to %s attempt %d: %s; again in %.0f s",
            e.id,
            e.type,
            to,
            attempt,
            exc,
            delay,
        )
        raise self.retry(countdown=delay) from exc
    else:
        log.info("notification %s (%s) to %s delivered: HTTP %d", e.id, e.type, to, status)


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


@signals.worker_ready.connect
def _say_how_callbacks_arrive(**_: Any) -> None:
    """At start-up: warn when provider callbacks cannot reach (or have not reached) the
    service; it then learns of its tasks by polling (``worker.core.polling``)."""
    s = get_settings()
    client = redis.Redis.from_url(s.redis_url)
    try:
        seen = CallbackSeen(client, Keys(s.key_prefix)).last()
    except redis.RedisError:
        seen = None
    finally:
        client.close()
    health = polling.callback_health(
        s.public_base(), seen, now=time.time(), silence=s.callback_silence_seconds
    )
    if not health.reachable:
        log.warning("callbacks: %s", health.reason)
