"""The account's reported costs per UTC day, in Redis.

A step's cost (``final_unit_deduction``) is counted when the transition that settles the step
commits, in the same commit (``Store._evolve`` calls ``count``): a terminal update applied twice
(callbacks repeat) settles the step once, so it is counted once. Amounts are kept as integer
micro-units (``HINCRBY``/``INCRBY``), so sums are exact. Key names: ``worker.state.keys``.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from worker.core.budget import from_micro, to_micro
from worker.core.chain import Chain, Step
from worker.state import text
from worker.state.keys import Keys

DAY_TTL = 400 * 24 * 3600  # a day's figures are kept a little over a year


def utc_day(at: float) -> str:
    """``YYYY-MM-DD`` of a Unix time, in UTC."""
    return dt.datetime.fromtimestamp(at, dt.UTC).date().isoformat()


def newly_settled(old: Chain, new: Chain) -> list[Step]:
    """The steps of ``new`` sent to the provider that ``old`` had not yet seen end."""
    ended = []
    for step in new.steps:
        before = old.steps[step.index] if step.index < len(old.steps) else None
        was_done = before is not None and before.status.done
        if step.task_id is not None and step.status.done and not was_done:
            ended.append(step)
    return ended


def count(pipe: Any, keys: Keys, chain: Chain, steps: list[Step], now: float) -> None:
    """Queue the counters for ``steps`` (``newly_settled``) on the transition's ``pipe``."""
    if not steps:
        return
    key = keys.spend_day(utc_day(now))
    for step in steps:
        if step.units is None:
            pipe.hincrby(key, "unpriced", 1)
            continue
        micro = to_micro(step.units)
        pipe.hincrby(key, "units", micro)
        pipe.hincrby(key, f"chain:{chain.id}", micro)
        pipe.hset(key, f"latest:{step.kind}", step.units)
        pipe.hset(keys.spend_latest, step.kind, step.units)
        pipe.incrby(keys.spend_total, micro)
    pipe.expire(key, DAY_TTL)


@dataclass(frozen=True)
class Day:
    """One UTC day's figures: units in all and per chain (most first), steps without a cost,
    and the latest cost reported per task kind."""

    date: str
    units: str
    unpriced: int
    chains: list[tuple[str, str]]
    latest: dict[str, str]

    def as_dict(self, *, chains: int | None = None) -> dict[str, Any]:
        shown = self.chains if chains is None else self.chains[:chains]
        return {
            "date": self.date,
            "units": self.units,
            "unpriced_steps": self.unpriced,
            "chains": [{"id": c, "units": u} for c, u in shown],
            "latest": self.latest,
        }


class Spend:
    """Reads what ``count`` wrote."""

    def __init__(
        self, client: redis.Redis, keys: Keys, clock: Callable[[], float] | None = None
    ) -> None:
        self.redis = client
        self.keys = keys
        self.clock = clock or time.time

    def day(self, date: str) -> Day:
        return _day(date, self.redis.hgetall(self.keys.spend_day(date)))

    def days(self, n: int) -> list[Day]:
        """Today and the ``n - 1`` days before it, newest first."""
        today = dt.datetime.fromtimestamp(self.clock(), dt.UTC).date()
        dates = [(today - dt.timedelta(days=i)).isoformat() for i in range(n)]
        with self.redis.pipeline(transaction=False) as pipe:
            for date in dates:
                pipe.hgetall(self.keys.spend_day(date))
            found = pipe.execute()
        return [_day(date, raw) for date, raw in zip(dates, found, strict=True)]

    def total(self) -> str:
        return from_micro(int(self.redis.get(self.keys.spend_total) or 0))


def _day(date: str, fields: dict[Any, Any]) -> Day:
    raw = {text(k): text(v) for k, v in fields.items()}
    chains = [
        (name.removeprefix("chain:"), int(v))
        for name, v in raw.items()
        if name.startswith("chain:")
    ]
    chains.sort(key=lambda c: (-c[1], c[0]))
    return Day(
        date=date,
        units=from_micro(int(raw.get("units", 0))),
        unpriced=int(raw.get("unpriced", 0)),
        chains=[(c, from_micro(m)) for c, m in chains],
        latest={k.removeprefix("latest:"): v for k, v in raw.items() if k.startswith("latest:")},
    )
