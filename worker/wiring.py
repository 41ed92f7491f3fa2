"""The Redis side built from the settings, once, for the worker's tasks and the web app alike.

The worker adds the provider client, storage and the jobs on top (``worker.tasks``); the web
process needs only this.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from worker.core.retention import Retention
from worker.settings import Settings
from worker.state.budget import Budget
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
        # POLLING=fixed plans every poll at POLL_AFTER_SECONDS: the sweep's comes after it.
        poll_grace=settings.sweep_seconds if settings.polling == "fixed" else 0.0,
    )


def retention(settings: Settings) -> Retention:
    """``CHAIN_RETENTION_DAYS`` and ``ARCHIVE_KEEP``."""
    return Retention.of(settings.chain_retention_days, settings.archive_keep)


def state(settings: Settings) -> State:
    client = redis.Redis.from_url(settings.redis_url)
    return State(
        chains=Store(
            client,
            prefix=settings.key_prefix,
            timing=timing(settings),
            retention=retention(settings),
        ),
        videos=Videos(client, prefix=settings.key_prefix),
    )


def slots(settings: Settings, state: State) -> Slots | None:
    """The provider slots when ``KLING_CONCURRENCY`` is set; None: no gate."""
    if settings.kling_concurrency is None:
        return None
    return Slots(state.redis, prefix=settings.key_prefix, limit=settings.kling_concurrency)


def budget(settings: Settings, state: State) -> Budget:
    """The daily unit budget: ``DAILY_UNIT_BUDGET``, or one set through the API."""
    return Budget(state.redis, state.chains.keys, settings.daily_unit_budget)
