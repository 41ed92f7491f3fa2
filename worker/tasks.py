"""Celery tasks: thin wrappers that hand a ``Runner`` result back to Celery as a retry."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import cache
from typing import Any

import redis

from worker.celery import app
from worker.runner import ARCHIVE_TASK, REFRESH_TASK, SUBMIT_TASK, Runner
from worker.settings import get_settings
from worker.store import Store, Timing, UnknownChain

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
def runner() -> Runner:
    s = get_settings()
    return Runner(s, store(), s.provider(), enqueue)


def _again(task: Any, delay: float | None) -> None:
    if delay is not None:
        raise task.retry(countdown=delay, max_retries=None)


def _run(task: Any, work: Callable[[], float | None]) -> None:
    try:
        delay = work()
    except UnknownChain as exc:
        # News about a chain this service does not hold (deleted, or another deployment's).
        log.warning("%s: no chain %s here; ignoring", task.name, exc)
        return
    _again(task, delay)


@app.task(bind=True, name=SUBMIT_TASK)
def submit_step(self: Any, chain_id: str, index: int) -> None:
    r, req = runner(), self.request
    _run(self, lambda: r.submit(chain_id, index, owner=req.id, attempt=req.retries))


@app.task(bind=True, name=REFRESH_TASK)
def refresh_step(self: Any, chain_id: str, index: int) -> None:
    r, req = runner(), self.request
    _run(self, lambda: r.refresh(chain_id, index, attempt=req.retries))


@app.task(bind=True, name=ARCHIVE_TASK)
def archive_video(self: Any, chain_id: str, video_id: str) -> None:
    r, req = runner(), self.request
    _run(self, lambda: r.archive(chain_id, video_id, owner=req.id, attempt=req.retries))


@app.task(name="kc.sweep")
def sweep() -> int:
    return runner().sweep()
