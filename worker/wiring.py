"""The Redis side built from the settings, once, for the worker's tasks and the web app alike.

The worker adds the provider client, storage and the jobs on top (``worker.tasks``); the web
process needs only this.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from worker.settings import Settings
from worker.state.chains import Store, Timing
from worker.state.slots import Slots
from worker.state.videos import Videos


@dataclass(frozen=True)
class State:
    """One Redis connection pool, and the repositories on it."""

    chains: Store
    videos: Videos

    @property
    def redis(self) -> redis.Redis:
        return self.chains.redis

    def close(self) -> None:
        self.chains.redis.close()


def timing(settings: Settings) -> Timing:
    return Timing(
        poll_after=settings.poll_after_seconds,
        submit_lease=settings.submit_lease_seconds,
    )


def state(settings: Settings) -> State:
    client = redis.Redis.from_url(settings.redis_url)
    return State(
        chains=Store(client, prefix=settings.key_prefix, timing=timing(settings)),
        videos=Videos(client, prefix=settings.key_prefix),
    )


def slots(settings: Settings, state: State) -> Slots | None:
    """The provider slots when ``KLING_CONCURRENCY`` is set; None: no gate."""
    if settings.kling_concurrency is None:
        return None
    return Slots(state.redis, prefix=settings.key_prefix, limit=settings.kling_concurrency)
