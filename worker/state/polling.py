"""What adaptive polling learns, in Redis: task durations per kind, and the last callback.

- ``Durations``: the latest ``SAMPLE_SIZE`` durations per task kind (a list, LPUSH + LTRIM,
  expiring ``DURATIONS_TTL`` after the newest), read back as ``worker.core.polling.Durations``
  and cached in the process for ``CACHE_SECONDS``: the curve moves slowly. Not while a kind
  has too few to plan by (``Durations.known``): the curve comes in with the samples that
  complete it, in every process, not up to ``CACHE_SECONDS`` after.
- ``CallbackSeen``: when a provider callback last passed its token check. The web process
  writes it at most once every ``SEEN_EVERY`` seconds (one SET), the worker and ``/healthz``
  read it (one GET, cached in the worker for ``CACHE_SECONDS``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import redis

from worker.core.polling import SAMPLE_SIZE, Durations
from worker.state import text
from worker.state.keys import Keys

DURATIONS_TTL = 30 * 24 * 3600
SEEN_TTL = 30 * 24 * 3600
SEEN_EVERY = 5.0  # seconds between two writes of the last callback, per process
CACHE_SECONDS = 2.0


def queue_sample(pipe: Any, keys: Keys, kind: str, seconds: float) -> None:
    """Queue one duration sample of ``kind`` on any pipeline: the commit that ends a step
    carries it (``Store.transition``), so learning costs no round trip of its own."""
    key = keys.task_durations(kind)
    pipe.lpush(key, f"{seconds:.3f}")
    pipe.ltrim(key, 0, SAMPLE_SIZE - 1)
    pipe.expire(key, DURATIONS_TTL)


class TaskDurations:
    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        *,
        clock: Callable[[], float] = time.monotonic,
        cache_seconds: float = CACHE_SECONDS,
    ) -> None:
        self.redis = client
        self.keys = keys
        self.clock = clock
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, Durations]] = {}

    def add(self, kind: str, seconds: float) -> None:
        if not seconds > 0:
            return
        with self.redis.pipeline(transaction=True) as pipe:
            queue_sample(pipe, self.keys, kind, seconds)
            pipe.execute()
        self._cache.pop(kind, None)

    def of(self, kind: str) -> Durations:
        now = self.clock()
        cached = self._cache.get(kind)
        if cached is not None and now - cached[0] < self.cache_seconds:
            return cached[1]
        raws = self.redis.lrange(self.keys.task_durations(kind), 0, SAMPLE_SIZE - 1)
        durations = Durations.of(_seconds(raws))
        if durations.known:  # else read again next time: the default curve plans until then
            self._cache[kind] = (now, durations)
        return durations


class CallbackSeen:
    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        cache_seconds: float = CACHE_SECONDS,
    ) -> None:
        self.redis = client
        self.keys = keys
        self.monotonic = monotonic
        self.cache_seconds = cache_seconds
        self._written = -float("inf")
        self._read: tuple[float, float | None] | None = None

    def due(self) -> bool:
        """Whether a callback arriving now should be written (once every ``SEEN_EVERY``)."""
        return self.monotonic() - self._written >= SEEN_EVERY

    def saw(self, at: float) -> None:
        """Note a callback that arrived at ``at`` (UNIX seconds)."""
        self._written = self.monotonic()
        self.redis.set(self.keys.callback_seen, f"{at:.3f}", ex=SEEN_TTL)

    def last(self, *, cached: bool = False) -> float | None:
        """When a callback last arrived, or None."""
        now = self.monotonic()
        if cached and self._read is not None and now - self._read[0] < self.cache_seconds:
            return self._read[1]
        parsed = _seconds([self.redis.get(self.keys.callback_seen)])
        value = parsed[0] if parsed else None
        self._read = (now, value)
        return value


def _seconds(raws: Iterable[object]) -> list[float]:
    found: list[float] = []
    for raw in raws:
        if raw is None:
            continue
        try:
            found.append(float(text(raw)))
        except ValueError:
            continue
    return found
