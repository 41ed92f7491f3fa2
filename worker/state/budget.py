"""The account's daily unit budget in Redis: the limit, and what steps in flight reserve.

Admission is one Lua script (``worker.core.budget.admit`` is the rule it carries out), so any
number of worker processes on any number of hosts share one budget. A step's reservation is
dropped in the same atomic commit as the transition that takes its step out of flight (``release``,
called by ``Store._evolve``), which is also where a settled step's cost is counted: reserved
units turn into spent units at once, never both and never neither. The sweep drops what a
crash may still leave behind (``stale``). Key names: ``worker.state.keys``.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import redis

from worker.core import budget
from worker.core.chain import Chain
from worker.core.slots import holds, member
from worker.state import HDEL_IF_SEEN, text
from worker.state.keys import Keys
from worker.state.spend import utc_day

# KEYS: reserved, the day's spend hash, the API's limit. ARGV: member, the environment's
# limit ("" for none), the step's cost ("" when unknown; all in micro-units). A step already
# holding a reservation keeps it. Returns {admitted, limit (-1: no budget), spent, reserved}.
_ADMIT = """
local limit = redis.call('GET', KEYS[3])
if not limit then limit = ARGV[2] end
if limit == '' then return {1, -1, 0, 0} end
limit = tonumber(limit)
local spent = tonumber(redis.call('HGET', KEYS[2], 'units') or '0')
local held = redis.call('HVALS', KEYS[1])
local cost = tonumber(ARGV[3])
local reserved = 0
for _, r in ipairs(held) do
  local v = tonumber(r)
  if v == -1 then v = cost or 0 end
  reserved = reserved + v
end
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return {1, limit, spent, reserved} end
if spent >= limit then return {0, limit, spent, reserved} end
if cost == nil then
  if #held > 0 then return {0, limit, spent, reserved} end
  redis.call('HSET', KEYS[1], ARGV[1], -1)
  return {1, limit, spent, reserved}
end
if spent + reserved + cost > limit then return {0, limit, spent, reserved} end
redis.call('HSET', KEYS[1], ARGV[1], cost)
return {1, limit, spent, reserved + cost}
"""


@dataclass(frozen=True)
class Admission:
    admitted: bool
    limit: int | None  # micro-units; None: no daily budget is set
    spent: int
    reserved: int


def release(pipe: Any, keys: Keys, old: Chain, new: Chain) -> None:
    """Queue, on the transition's pipeline ``pipe``, the end of the reservations of the steps that
    ``old`` had in flight and ``new`` no longer has."""
    gone = [
        member(new.id, s.index)
        for s in old.steps
        if holds(s.status) and not holds(new.steps[s.index].status)
    ]
    if gone:
        pipe.hdel(keys.budget_reserved, *gone)


class Budget:
    """The daily unit budget: ``DAILY_UNIT_BUDGET``, unless one was set through the API."""

    def __init__(self, client: redis.Redis, keys: Keys, default: Decimal | None) -> None:
        self.redis = client
        self.keys = keys
        self.default = None if default is None else budget.to_micro(default)
        self._admit = client.register_script(_ADMIT)
        self._reclaim = client.register_script(HDEL_IF_SEEN)

    def admit(self, chain_id: str, index: int, cost: Decimal | None, *, now: float) -> Admission:
        """Reserve ``cost`` (None: unknown) for the step if it fits today's budget."""
        keys = [
            self.keys.budget_reserved,
            self.keys.spend_day(utc_day(now)),
            self.keys.budget_daily,
        ]
        args = [
            member(chain_id, index),
            "" if self.default is None else str(self.default),
            "" if cost is None else str(budget.to_micro(cost)),
        ]
        ok, limit, spent, reserved = self._admit(keys=keys, args=args)
        return Admission(
            bool(ok), None if int(limit) < 0 else int(limit), int(spent), int(reserved)
        )

    def set_limit(self, units: Decimal | None) -> None:
        """Set the daily budget (None: back to ``DAILY_UNIT_BUDGET``); waiting steps see it
        the next time they ask (``BUDGET_POLL_SECONDS``)."""
        if units is None:
            self.redis.delete(self.keys.budget_daily)
        else:
            self.redis.set(self.keys.budget_daily, budget.to_micro(units))

    def account_costs(self) -> dict[str, str]:
        """The latest reported cost per task kind."""
        raw = self.redis.hgetall(self.keys.spend_latest)
        return {text(k): text(v) for k, v in raw.items()}

    def reservations(self) -> dict[str, str]:
        raw = self.redis.hgetall(self.keys.budget_reserved)
        return {text(k): text(v) for k, v in raw.items()}

    def reclaim(self, name: str, seen: str) -> int:
        return int(self._reclaim(keys=[self.keys.budget_reserved], args=[name, seen]))

    def status(self, now: float) -> dict[str, Any] | None:
        """The budget as the API shows it, or None when none is set."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(self.keys.budget_daily)
            pipe.hget(self.keys.spend_day(utc_day(now)), "units")
            pipe.hvals(self.keys.budget_reserved)
            override, spent_raw, held = pipe.execute()
        limit = int(override) if override is not None else self.default
        if limit is None:
            return None
        spent = int(spent_raw or 0)
        known = [int(v) for v in held if int(v) != budget.UNKNOWN]
        reserved = sum(known)
        return {
            "daily_units": budget.from_micro(limit),
            "source": "api" if override is not None else "DAILY_UNIT_BUDGET",
            "spent": budget.from_micro(spent),
            "reserved": budget.from_micro(reserved),
            "steps_in_flight": len(held),
            "remaining": budget.from_micro(max(0, limit - spent - reserved)),
            "resets_at": budget.iso(budget.next_reset(now)),
        }
