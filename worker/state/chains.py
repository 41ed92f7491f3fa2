"""Chain state in Redis: one JSON document per chain, changed only by atomic transitions.

Besides the chain documents and their listing, it keeps the owed work (the derived
schedule, read by the beat sweep), Idempotency-Keys, which step recorded each provider task
(never two), and what a provider has been seen to do. Key names: ``worker.state.keys``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import redis

from kling.models import VIDEO_LIFETIME_SECONDS
from worker.core.chain import Chain, Event, Outcome, evolve
from worker.core.reconcile import Capability
from worker.core.schedule import Due, schedule
from worker.state import Writes, optimistic
from worker.state.keys import Keys

TASK_OWNER_TTL = int(VIDEO_LIFETIME_SECONDS) + 5 * 24 * 3600  # then the task is gone anyway
CAPABILITY_TTL = 24 * 3600  # a gateway may change what it does: check again daily

# Pop the members due by ARGV[1] (at most ARGV[3]) and push each forward to ARGV[2], in one
# step: two sweeps running at once (two beat processes by mistake) get disjoint work.
_TAKE_DUE = """
local items = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, member in ipairs(items) do
  redis.call('ZADD', KEYS[1], ARGV[2], member)
end
return items
"""


class UnknownChain(KeyError):
    """No chain has this id."""


@dataclass(frozen=True)
class Timing:
    poll_after: float
    submit_lease: float
    archive_lease: float


class Store:
    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str,
        timing: Timing,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = client
        self.keys = Keys(prefix)
        self.timing = timing
        self.clock = clock
        self._take_due = client.register_script(_TAKE_DUE)

    def _key(self, chain_id: str) -> str:
        return self.keys.chain(chain_id)

    @property
    def _due(self) -> str:
        return self.keys.due

    def _schedule(self, chain: Chain) -> dict[str, float]:
        """The chain's owed work as the members of the ``due`` set."""
        t = self.timing
        due = schedule(
            chain,
            poll_after=t.poll_after,
            submit_lease=t.submit_lease,
            archive_lease=t.archive_lease,
        )
        return {d.member: at for d, at in due.items()}

    def create(self, chain: Chain) -> None:
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self._key(chain.id), chain.to_json(), nx=True)
            pipe.zadd(self.keys.chains, {chain.id: chain.created_at})
            due = self._schedule(chain)
            if due:
                pipe.zadd(self._due, due)
            created, *_ = pipe.execute()
        if not created:
            raise ValueError(f"chain {chain.id} exists already")

    def claim_key(self, key: str, chain_id: str, fingerprint: str, ttl: int) -> tuple[str, str]:
        """Bind an Idempotency-Key to ``chain_id`` unless it is bound already.

        Returns the (chain id, body fingerprint) the key belongs to: ours when we won.
        """
        name = self.keys.idempotency(key)
        value = f"{chain_id} {fingerprint}"
        if self.redis.set(name, value, nx=True, ex=ttl):
            return chain_id, fingerprint
        held = _text(self.redis.get(name) or value)
        owner, _, seen = held.partition(" ")
        return owner, seen

    def get(self, chain_id: str) -> Chain:
        raw = self.redis.get(self._key(chain_id))
        if raw is None:
            raise UnknownChain(chain_id)
        return Chain.from_json(raw)

    def recent(self, *, limit: int, before: float | None = None) -> list[Chain]:
        top = f"({before}" if before is not None else "+inf"
        ids = self.redis.zrevrangebyscore(self.keys.chains, top, "-inf", start=0, num=limit)
        if not ids:
            return []
        raws = self.redis.mget([self._key(_text(i)) for i in ids])
        return [Chain.from_json(r) for r in raws if r is not None]

    def transition(self, chain_id: str, event: Event) -> Outcome:
        """Apply ``event`` atomically (optimistic WATCH/MULTI, retried on conflict)."""
        key = self._key(chain_id)

        def decide(raw: bytes | None) -> tuple[Writes | None, Outcome]:
            if raw is None:
                raise UnknownChain(chain_id)
            old = Chain.from_json(raw)
            out = evolve(Chain.from_json(raw), event, self.clock(), before=old)
            if out.chain == old:
                return None, out
            before, after = self._schedule(old), self._schedule(out.chain)

            def writes(pipe: Any) -> None:
                pipe.set(key, out.chain.to_json())
                gone = [m for m in before if m not in after]
                if gone:
                    pipe.zrem(self._due, *gone)
                changed = {m: at for m, at in after.items() if before.get(m) != at}
                if changed:
                    pipe.zadd(self._due, changed)

            return writes, out

        return optimistic(self.redis, key, decide)

    def take_due(self, *, now: float, hold: float, limit: int = 500) -> list[Due]:
        """Due work, each item held back for ``hold`` seconds so it is handed out once."""
        items = self._take_due(keys=[self._due], args=[now, now + hold, limit])
        return [Due.parse(_text(i)) for i in items]

    # -- provider tasks and what the provider can do ------------------------------------------
    def claim_task(self, task_id: str, owner: str) -> str:
        """Bind a provider task to the step ``owner`` unless it is bound; return its owner."""
        name = self.keys.task_owner(task_id)
        if self.redis.set(name, owner, nx=True, ex=TASK_OWNER_TTL):
            return owner
        return _text(self.redis.get(name) or owner)

    def task_owners(self, task_ids: Iterable[str]) -> dict[str, str]:
        """The steps that recorded these tasks, for the ones some step did."""
        ids = list(task_ids)
        if not ids:
            return {}
        found = self.redis.mget([self.keys.task_owner(t) for t in ids])
        return {t: _text(v) for t, v in zip(ids, found, strict=True) if v is not None}

    def capabilities(self, provider: str, *whats: str) -> dict[str, Capability]:
        raws = self.redis.hmget(self.keys.provider(provider), list(whats))
        return {
            what: Capability(_text(raw)) if raw is not None else Capability.UNKNOWN
            for what, raw in zip(whats, raws, strict=True)
        }

    def set_capability(self, provider: str, what: str, value: Capability) -> None:
        key = self.keys.provider(provider)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, what, value.value)
            pipe.expire(key, CAPABILITY_TTL)
            pipe.execute()

    def ping(self) -> bool:
        try:
            return bool(self.redis.ping())
        except redis.RedisError:
            return False


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
