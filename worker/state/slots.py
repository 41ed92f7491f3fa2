"""The account's concurrency slots in Redis: a holders hash and a FIFO line of waiters.

Every change is one Lua script, so any number of worker processes on any number of hosts
share the count (``worker.core.slots`` holds the rules). Key names: ``worker.state.keys``.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from worker.core.slots import member, parse
from worker.state import HDEL_IF_SEEN, text
from worker.state.keys import Keys

# KEYS: holders, waiters. ARGV: member, limit, now. A holder keeps its slot; otherwise the
# step joins the line (keeping its first place) and takes a slot when it is among the first
# ``limit - in use`` waiters (``worker.core.slots.may_take``). Returns {taken, in use}.
_ACQUIRE = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  return {1, redis.call('HLEN', KEYS[1])}
end
redis.call('ZADD', KEYS[2], 'NX', ARGV[3], ARGV[1])
local in_use = redis.call('HLEN', KEYS[1])
local rank = redis.call('ZRANK', KEYS[2], ARGV[1])
if rank < tonumber(ARGV[2]) - in_use then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  return {1, in_use + 1}
end
return {0, in_use}
"""

# KEYS: holders, waiters. ARGV: member, limit, leave line ("1"/"0"). Frees the step's slot
# and, when it held one, returns the waiters that may take the free slots now (the
# hand-over); a release repeated (a terminal status applied twice) hands nothing over.
_RELEASE = """
local freed = redis.call('HDEL', KEYS[1], ARGV[1])
if ARGV[3] == '1' then redis.call('ZREM', KEYS[2], ARGV[1]) end
if freed == 0 then return {} end
local free = tonumber(ARGV[2]) - redis.call('HLEN', KEYS[1])
if free <= 0 then return {} end
return redis.call('ZRANGE', KEYS[2], 0, free - 1)
"""


@dataclass(frozen=True)
class Acquired:
    taken: bool
    in_use: int


class Slots:
    """At most ``limit`` steps hold a slot at once, across every process sharing Redis."""

    def __init__(self, client: redis.Redis, *, prefix: str, limit: int) -> None:
        self.redis = client
        self.keys = Keys(prefix)
        self.limit = limit
        self._acquire = client.register_script(_ACQUIRE)
        self._release = client.register_script(_RELEASE)
        self._reclaim = client.register_script(HDEL_IF_SEEN)

    def _keys(self) -> list[str]:
        return [self.keys.slot_holders, self.keys.slot_waiters]

    def acquire(self, chain_id: str, index: int, *, now: float) -> Acquired:
        args: list[str | int] = [member(chain_id, index), self.limit, repr(now)]
        taken, in_use = self._acquire(keys=self._keys(), args=args)
        return Acquired(bool(taken), int(in_use))

    def release(self, chain_id: str, index: int, *, leave_line: bool) -> list[tuple[str, int]]:
        """Free the step's slot (a no-op when it holds none); ``leave_line`` also takes it out
        of the line. Returns the waiters (chain, index) a slot is free for now."""
        args: list[str | int] = [member(chain_id, index), self.limit, "1" if leave_line else "0"]
        return [parse(text(m)) for m in self._release(keys=self._keys(), args=args)]

    def holders(self) -> dict[str, str]:
        raw = self.redis.hgetall(self.keys.slot_holders)
        return {text(k): text(v) for k, v in raw.items()}

    def waiters(self) -> list[str]:
        members: list[bytes] = self.redis.zrange(self.keys.slot_waiters, 0, -1)  # type: ignore[assignment]
        return [text(m) for m in members]

    def reclaim(self, name: str, seen: str) -> bool:
        """Take a stale holder's slot away, unless it changed since it was ``seen``."""
        return bool(self._reclaim(keys=[self.keys.slot_holders], args=[name, seen]))

    def forget_waiter(self, name: str) -> None:
        self.redis.zrem(self.keys.slot_waiters, name)

    def next_up(self) -> list[tuple[str, int]]:
        """The waiters a slot is free for now (the sweep hands these over again)."""
        free = self.limit - int(self.redis.hlen(self.keys.slot_holders))
        if free <= 0:
            return []
        return [parse(m) for m in self.waiters()[:free]]
