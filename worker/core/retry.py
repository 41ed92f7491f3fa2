"""The one retry policy: how long to wait before the next attempt, and when to stop.

Every retry in the service waits `delay(kind, attempt)` seconds: exponential backoff with
full jitter, uniform in ``[0, min(cap, base * 2**(attempt-1))]``, so many workers retrying
the same server spread out instead of arriving together (dramatiq's ``compute_backoff``
does the same). Only the numbers differ from one kind of work to another, and they are all
in `POLICIES`, one row per `Kind`.

``attempt`` is the number of the attempt that just failed, from 1: a Celery task, whose
``request.retries`` is 0 on its first run, asks for ``delay(kind, retries + 1)``. A kind
with ``max_attempts`` stops after that many attempts in all (`exhausted`); `after` is the
delay, or None when no attempt is left.

Most of these delays become a Celery retry countdown. The Redis transport delivers a task
again when it is held back longer than the broker's visibility timeout (``worker.celery``,
one hour), so every cap stays below it, and a receiver's ``Retry-After`` never lifts a delay
past its cap.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

__all__ = ["POLICIES", "Kind", "Policy", "after", "ceiling", "delay", "exhausted"]


class Kind(StrEnum):
    """A kind of work that is retried; its numbers are its row in `POLICIES`."""

    CREATE = "create"
    """The provider could not take a step's create request now (``Runner.submit``)."""
    QUERY = "query"
    """A query of a step's task failed (``Runner.refresh``); then the sweep polls again."""
    CANDIDATE = "candidate"
    """A query of the task a callback named, before the create reply came (``Runner.refresh``)."""
    LOOKUP = "lookup"
    """Looking up a create whose reply was lost, until the retry deadline (``Runner``)."""
    DOWNLOAD = "download"
    """The next download attempt within one archive task (``worker.outbound.download``)."""
    ARCHIVE = "archive"
    """An archive task whose download failed for now (``Archiver.archive_video``)."""
    TASK_QUERY = "task_query"
    """A query of any task of the account, to archive its videos (``Archiver.archive_task``)."""
    NOTIFY = "notify"
    """A notification the receiver could not take now (``worker.tasks.notify``)."""
    REDIS = "redis"
    """A task that found Redis unavailable (``worker.tasks``)."""


@dataclass(frozen=True)
class Policy:
    """Backoff from `base` seconds, doubling per attempt up to `cap` seconds."""

    base: float
    cap: float
    max_attempts: int | None = None
    """Attempts in all, the first included; None: a deadline or a person ends the retries."""

    def __post_init__(self) -> None:
        if not 0 < self.base <= self.cap:
            raise ValueError(f"need 0 < base <= cap, got base {self.base}, cap {self.cap}")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")

    def ceiling(self, attempt: int) -> float:
        """The longest wait after failed attempt number `attempt` (from 1)."""
        if attempt < 1:
            raise ValueError(f"attempt counts from 1, got {attempt}")
        exponent = min(attempt - 1, 64)  # 2.0**64 is far past any cap; avoids float overflow
        return min(self.cap, self.base * 2.0**exponent)

    def delay(
        self, attempt: int, *, rng: random.Random | None = None, retry_after: float | None = None
    ) -> float:
        """Seconds to wait after failed attempt number `attempt`: uniform in [0, `ceiling`].

        With `retry_after` (what the other side asked for) no sooner than that, and never
        past `cap`.
        """
        top = self.ceiling(attempt)
        wait = rng.uniform(0.0, top) if rng is not None else random.uniform(0.0, top)
        if retry_after is not None:
            wait = min(self.cap, max(wait, retry_after))
        return wait

    def exhausted(self, attempt: int) -> bool:
        """Was failed attempt number `attempt` the last one allowed?"""
        return self.max_attempts is not None and attempt >= self.max_attempts


POLICIES: Mapping[Kind, Policy] = MappingProxyType(
    {
        Kind.CREATE: Policy(base=1.0, cap=60.0),
        Kind.QUERY: Policy(base=1.0, cap=60.0, max_attempts=6),
        Kind.CANDIDATE: Policy(base=1.0, cap=60.0, max_attempts=4),
        Kind.LOOKUP: Policy(base=2.0, cap=120.0),
        Kind.DOWNLOAD: Policy(base=1.0, cap=60.0),
        Kind.ARCHIVE: Policy(base=2.0, cap=600.0),
        Kind.TASK_QUERY: Policy(base=1.0, cap=600.0, max_attempts=60),
        # 12 attempts: the 11 waits add up to at most 8115 s (2 h 15 min), about half that on
        # average; a receiver that is down for longer misses the event.
        Kind.NOTIFY: Policy(base=5.0, cap=3000.0, max_attempts=12),
        Kind.REDIS: Policy(base=1.0, cap=30.0),
    }
)


def ceiling(kind: Kind, attempt: int) -> float:
    """The longest wait after failed attempt number `attempt` of `kind` (from 1)."""
    return POLICIES[kind].ceiling(attempt)


def delay(
    kind: Kind, attempt: int, *, rng: random.Random | None = None, retry_after: float | None = None
) -> float:
    """Seconds to wait after failed attempt number `attempt` of `kind` (see `Policy.delay`)."""
    return POLICIES[kind].delay(attempt, rng=rng, retry_after=retry_after)


def exhausted(kind: Kind, attempt: int) -> bool:
    """Was failed attempt number `attempt` of `kind` the last one allowed?"""
    return POLICIES[kind].exhausted(attempt)


def after(
    kind: Kind, attempt: int, *, rng: random.Random | None = None, retry_after: float | None = None
) -> float | None:
    """`delay`, or None when failed attempt number `attempt` was the last one allowed."""
    policy = POLICIES[kind]
    if policy.exhausted(attempt):
        return None
    return policy.delay(attempt, rng=rng, retry_after=retry_after)
