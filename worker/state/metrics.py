"""The service's counters and histograms in Redis, where every process and host adds to them.

One hash per family (``Keys.metric``, the families in ``worker.core.metrics``): a counter's
fields are its label values, a histogram's its buckets (each counting the observations that
fell in it alone), ``sum`` and ``count``. A process restart loses nothing, and two web
processes or two worker hosts add to the same figures. The web process reads them at scrape
time (``Metrics.read``, rendered by ``webhook.metrics``), along with the gauges, which are
read from the state itself: chains per status, videos per state and at risk (all of them,
by ``ZCARD``/``ZCOUNT``), provider slots, queue lengths.

Adding to a figure never fails the caller's work: a Redis error is logged and the figure
misses one count. The two that must be exact are written in the chain transition's own
commit instead (``Store._evolve`` calls ``chain_moved`` and ``task_ended``), so a terminal
status applied twice counts once.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis

from kling.errors import KlingError
from kling.models import VIDEO_LIFETIME_SECONDS, Task
from worker.core.chain import Chain
from worker.core.metrics import (
    CALLBACKS,
    COUNTERS,
    CREATES,
    DOWNLOAD_BYTES,
    DOWNLOAD_SECONDS,
    HISTOGRAMS,
    QUERIES,
    TASK_SECONDS,
    TURNAROUND,
    CallbackOutcome,
    Counter,
    CreateOutcome,
    Histogram,
    QueryOutcome,
    label_field,
    label_values,
    query_outcome,
    task_seconds,
)
from worker.core.videos import VideoState
from worker.state import Also, Read, Writes, text
from worker.state.keys import Keys

log = logging.getLogger(__name__)

T = TypeVar("T")

ARRIVAL_TTL = 3600  # a step whose next create comes later than this has no turnaround
MINUTE_TTL = 2 * 3600
RECOUNT_ATTEMPTS = 5
RECOUNT_PAGE = 500
# kombu's Redis transport keeps a queue's messages of priority 3, 6 and 9 in lists of their
# own, named with this separator (``kombu.transport.redis``: PRIORITY_STEPS, sep).
PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")


# -- written in the chain transition's commit (``worker.state.chains``) ----------------------
def chain_moved(pipe: Any, keys: Keys, old: str | None, new: str) -> None:
    """Queue the change of a chain's status (``old`` None: a new chain) on ``pipe``."""
    if old == new:
        return
    if old is not None:
        pipe.hincrby(keys.chain_counts, old, -1)
    pipe.hincrby(keys.chain_counts, new, 1)


def task_ended(pipe: Any, keys: Keys, task: Task) -> None:
    """Queue the observation of an ended task's provider time, when its timestamps tell it."""
    seconds = task_seconds(task)
    if seconds is not None:
        observe(pipe, keys, TASK_SECONDS, seconds)


def observe(pipe: Any, keys: Keys, histogram: Histogram, value: float) -> None:
    key = keys.metric(histogram.name)
    pipe.hincrby(key, histogram.bucket(value), 1)
    pipe.hincrbyfloat(key, "sum", value)
    pipe.hincrby(key, "count", 1)


# -- what a scrape reads ------------------------------------------------------------------------
@dataclass(frozen=True)
class HistogramValues:
    buckets: list[tuple[str, int]]  # cumulative, ``+Inf`` last
    sum: float
    count: int


@dataclass(frozen=True)
class Snapshot:
    """Every figure, read at one scrape."""

    counters: dict[str, dict[tuple[str, ...], float]]
    histograms: dict[str, HistogramValues]
    chains: dict[str, int] | None  # None: not counted yet (``Metrics.chain_counts``)
    videos: dict[str, int]
    at_risk: int
    oldest_pending_age: float  # 0 when no video is pending
    slots_in_use: int
    queues: dict[str, int]


@dataclass(frozen=True)
class Refused:
    last_hour: int
    total: int


@dataclass
class Metrics:
    """Adds to the figures (any process) and reads them (the web process's scrape)."""

    redis: redis.Redis
    keys: Keys
    clock: Callable[[], float] = field(default=time.time)

    def _send(self, what: str, queue: Callable[[Any], None]) -> list[Any] | None:
        """Run ``queue``'s commands in one MULTI; None (logged) when Redis failed."""
        try:
            with self.redis.pipeline(transaction=True) as pipe:
                queue(pipe)
                result: list[Any] = pipe.execute()
                return result
        except redis.RedisError as exc:
            log.warning("metrics: %s not counted: %s", what, exc)
            return None

    def _add(self, pipe: Any, family: str, labels: tuple[str, ...], by: int = 1) -> None:
        pipe.hincrby(self.keys.metric(family), label_field(labels), by)

    # -- counting ----------------------------------------------------------------------------
    def created(
        self,
        kind: str,
        outcome: CreateOutcome,
        *,
        chain_id: str,
        index: int,
        refreshed: float | None = None,
    ) -> None:
        """A create request's outcome. An accepted one ends the step turnaround begun by the
        callback that said the previous step succeeded, if one did (``accepted``, with the
        arrival taken at once instead of in the commit that records the task)."""
        if outcome is CreateOutcome.ACCEPTED:
            try:
                accepted = self.accepted(kind, chain_id=chain_id, index=index, refreshed=refreshed)
                writes = accepted(self._take)
            except redis.RedisError as exc:
                log.warning("metrics: a create (%s) not counted: %s", outcome, exc)
                return
            self._send(f"a create ({outcome})", writes)
            return
        now = self.clock()

        def queue(pipe: Any) -> None:
            self._add(pipe, CREATES.name, (kind, outcome.value))
            if outcome is CreateOutcome.REFUSED:
                minute = self.keys.refused_minute(int(now // 60))
                pipe.incr(minute)
                pipe.expire(minute, MINUTE_TTL)

        self._send(f"a create ({outcome})", queue)

    def accepted(
        self, kind: str, *, chain_id: str, index: int, refreshed: float | None = None
    ) -> Also:
        """``created`` for an accepted create, as writes for the commit that records the
        step's task (``Store.transition(also=...)``) instead of round trips of their own: the
        count, and the turnaround it ends (read and cleared in that commit).

        ``refreshed``: when the previous step's end was recorded (its ``ended_at``). The part
        of the turnaround up to then is how long the success callback's refresh waited to
        run, kept for the sweep (``Keys.refresh_wait_last``); a wait for a slot or the
        budget, and the create's retries, come after it and are left out of that."""
        now = self.clock()

        def also(read: Read) -> Writes:
            arrival = self.keys.callback_arrived(chain_id, index - 1) if index > 0 else None
            arrived = read(arrival) if arrival is not None else None

            def writes(pipe: Any) -> None:
                self._add(pipe, CREATES.name, (kind, CreateOutcome.ACCEPTED.value))
                if arrival is not None and arrived is not None:
                    took = now - float(arrived)
                    waited = max(0.0, min(now, refreshed or now) - float(arrived))
                    pipe.delete(arrival)
                    observe(pipe, self.keys, TURNAROUND, took)
                    pipe.set(self.keys.refresh_wait_last, repr(waited), ex=ARRIVAL_TTL)

            return writes

        return also

    def _take(self, key: str) -> bytes | None:
        """A value read and deleted at once (GETDEL)."""
        value = self.redis.getdel(key)
        return value.encode() if isinstance(value, str) else value

    def callback(
        self, outcome: CallbackOutcome, *, succeeded: tuple[str, int] | None = None
    ) -> None:
        """A callback's outcome; ``succeeded``: the step (chain, index) it says succeeded,
        whose next step's turnaround starts now (the first such callback only)."""
        self._send(
            f"a callback ({outcome})", lambda pipe: self.queue_callback(pipe, outcome, succeeded)
        )

    def queue_callback(
        self, pipe: Any, outcome: CallbackOutcome, succeeded: tuple[str, int] | None = None
    ) -> None:
        """``callback``'s commands, queued on any pipeline (the web's asyncio one too)."""
        self._add(pipe, CALLBACKS.name, (outcome.value,))
        if succeeded is not None:
            key = self.keys.callback_arrived(*succeeded)
            pipe.set(key, repr(self.clock()), nx=True, ex=ARRIVAL_TTL)

    def announced(self, steps: Sequence[tuple[str, int]], *, within: float) -> set[tuple[str, int]]:
        """The steps among ``steps`` (chain, index) that a callback said succeeded less than
        ``within`` seconds ago (``queue_callback``), plus how long the latest such
        callback's refresh waited to run (``accepted``: long under a backlog), and whose next step
        has not been created since (that create takes the arrival): the web queued the
        callback's refresh with it, and the refresh may still be waiting to run."""
        if not steps:
            return set()
        keys = [self.keys.refresh_wait_last, *(self.keys.callback_arrived(*s) for s in steps)]
        waited, *raws = self.redis.mget(keys)
        now = self.clock()
        within += _seconds_in(waited)
        return {step for step, raw in zip(steps, raws, strict=True) if _since(raw, now) < within}

    def queried(self, outcome: QueryOutcome) -> None:
        self._send(f"a query ({outcome})", lambda p: self._add(p, QUERIES.name, (outcome.value,)))

    def query(self, ask: Callable[[], T], *, defer: list[Also] | None = None) -> T:
        """``ask()`` (a task query), counted by its outcome; its error is raised on. With
        ``defer``, a good reply's count is appended there instead, as writes for the commit
        that applies the reply (``Store.transition(also=...)``)."""
        try:
            answer = ask()
        except KlingError as exc:
            self.queried(query_outcome(exc))
            raise
        if defer is None:
            self.queried(QueryOutcome.OK)
        else:
            defer.append(lambda _: lambda pipe: self._add(pipe, QUERIES.name, ("ok",)))
        return answer

    def downloaded(self, size: int, seconds: float) -> None:
        self._send("a download", self._download(size, seconds))

    def download_counted(self, size: int, seconds: float) -> Also:
        """``downloaded``, as writes for the commit that settles the video's record
        (``Store.settle(also=...)``) instead of a round trip of its own."""
        queue = self._download(size, seconds)
        return lambda _: queue

    def _download(self, size: int, seconds: float) -> Writes:
        def queue(pipe: Any) -> None:
            self._add(pipe, DOWNLOAD_BYTES.name, (), size)
            observe(pipe, self.keys, DOWNLOAD_SECONDS, seconds)

        return queue

    # -- reading -----------------------------------------------------------------------------
    def refused(self) -> Refused:
        """Refused creates in the last hour (per-minute buckets) and in all."""
        minute = int(self.clock() // 60)
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.mget([self.keys.refused_minute(m) for m in range(minute - 59, minute + 1)])
            pipe.hgetall(self.keys.metric(CREATES.name))
            minutes, creates = pipe.execute()
        total = 0
        for name, n in creates.items():
            values = label_values(CREATES, text(name))
            if values is not None and values[1] == CreateOutcome.REFUSED.value:
                total += int(n)
        return Refused(sum(int(n) for n in minutes if n is not None), total)

    def read(self, *, queues: Sequence[str], warn_window: float) -> Snapshot:
        """Every figure, in one pipeline (and a one-time count of the chains, ever)."""
        chains = self.chain_counts()
        now = self.clock()
        k = self.keys
        queue_lists = [(q, f"{q}{s}") for q in queues for s in PRIORITY_SUFFIXES]
        with self.redis.pipeline(transaction=False) as pipe:
            for family in (*COUNTERS, *HISTOGRAMS):
                pipe.hgetall(k.metric(family.name))
            for state in VideoState:
                pipe.zcard(k.videos_in(state))
            pipe.zcount(k.videos_by_deadline, "-inf", now + warn_window)
            pipe.zrange(k.videos_by_deadline, 0, 0, withscores=True)
            pipe.hlen(k.slot_holders)
            for _, name in queue_lists:
                pipe.llen(name)
            found = iter(pipe.execute())
        counters = {c.name: _counter(c, next(found)) for c in COUNTERS}
        histograms = {h.name: _histogram(h, next(found)) for h in HISTOGRAMS}
        videos = {state.value: int(next(found)) for state in VideoState}
        at_risk = int(next(found))
        first = next(found)
        oldest = 0.0
        if first:
            created = float(first[0][1]) - VIDEO_LIFETIME_SECONDS
            oldest = max(0.0, now - created)
        slots = int(next(found))
        depth: dict[str, int] = dict.fromkeys(queues, 0)
        for queue, _ in queue_lists:
            depth[queue] += int(next(found))
        return Snapshot(counters, histograms, chains, videos, at_risk, oldest, slots, depth)

    def chain_counts(self) -> dict[str, int] | None:
        """Chains per status; counted once from the documents when they never were."""
        if not self.redis.exists(self.keys.chain_counts_ready) and not self._recount():
            return None
        raw = self.redis.hgetall(self.keys.chain_counts)
        return {text(k): int(v) for k, v in raw.items()}

    def _recount(self) -> bool:
        """Count the chains per status from their documents, once per deployment (chains
        stored before the transitions kept the counts). A transition or a new chain during
        the count touches the counts and so starts it over; False after a few tries."""
        counts_key = self.keys.chain_counts
        for _ in range(RECOUNT_ATTEMPTS):
            pipe: Any
            with self.redis.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(counts_key)
                    counts = _statuses(pipe, self.keys)
                    pipe.multi()
                    pipe.delete(counts_key)
                    if counts:
                        pipe.hset(counts_key, mapping=counts)
                    pipe.set(self.keys.chain_counts_ready, "1")
                    pipe.execute()
                except redis.WatchError:
                    continue
            log.info("metrics: counted %d chain(s) per status", sum(counts.values()))
            return True
        log.warning("metrics: the chains kept changing while counted; kc_chains left out")
        return False


def _seconds_in(raw: bytes | str | None) -> float:
    """The non-negative, finite seconds ``raw`` holds (``Keys.refresh_wait_last``), else 0."""
    try:
        value = float(raw) if raw is not None else 0.0
    except ValueError:
        return 0.0
    return value if 0.0 <= value < math.inf else 0.0


def _since(raw: bytes | str | None, now: float) -> float:
    """Seconds since the arrival ``raw`` records (``Keys.callback_arrived``); infinite for
    none, or for a value that is not a time."""
    try:
        return now - float(raw) if raw is not None else math.inf
    except ValueError:
        return math.inf


def _statuses(pipe: Any, keys: Keys) -> dict[str, int]:
    counts: dict[str, int] = {}
    ids = [text(i) for i in pipe.zrange(keys.chains, 0, -1)]
    for start in range(0, len(ids), RECOUNT_PAGE):
        for raw in pipe.mget([keys.chain(i) for i in ids[start : start + RECOUNT_PAGE]]):
            if raw is not None:
                status = Chain.from_json(raw).status.value
                counts[status] = counts.get(status, 0) + 1
    return counts


def _counter(counter: Counter, raw: dict[Any, Any]) -> dict[tuple[str, ...], float]:
    out: dict[tuple[str, ...], float] = {}
    for name, n in raw.items():
        values = label_values(counter, text(name))
        if values is not None:
            out[values] = float(n)
    return out


def _histogram(histogram: Histogram, raw: dict[Any, Any]) -> HistogramValues:
    fields = {text(k): text(v) for k, v in raw.items()}
    counts = {k: int(v) for k, v in fields.items() if k not in ("sum", "count")}
    total = int(fields.get("count", 0))
    return HistogramValues(
        histogram.cumulative(counts, total), float(fields.get("sum", 0.0)), total
    )


__all__ = [
    "ARRIVAL_TTL",
    "HistogramValues",
    "Metrics",
    "Refused",
    "Snapshot",
    "chain_moved",
    "observe",
    "task_ended",
]
