"""Chain state in Redis: one JSON document per chain, changed only by atomic transitions.

Besides the chain documents and their listing, it keeps the owed work (the derived
schedule, read by the beat sweep), Idempotency-Keys, which step recorded each provider task
(never two), and what a provider has been seen to do. Key names: ``worker.state.keys``.

A chain's videos live in the archive's records (``worker.state.videos``). The transition
that asks for a video to be archived registers its record in the same commit, and the change
that archives or loses the record tells its chain in the same commit: no crash can leave a
video the chain made unknown to the archive, nor a chain waiting for a settled video.

A finished chain's document expires after ``CHAIN_RETENTION_DAYS`` (``_put``; a resume
clears it) and the sweep takes it out of the listing (``trim_expired``); with
``ARCHIVE_KEEP=final`` the change that makes a chain succeed owes its prune (``prune``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, cast

import redis

from kling.models import VIDEO_LIFETIME_SECONDS
from worker.core.chain import (
    ArchiveVideo,
    Chain,
    ChainStatus,
    Event,
    Outcome,
    StepStatus,
    TaskUpdate,
    VideoSettled,
    apply,
    evolve,
    video_record,
)
from worker.core.metrics import task_seconds
from worker.core.polling import took
from worker.core.reconcile import Capability
from worker.core.retention import Keep, Retention, expires, newly_succeeded
from worker.core.schedule import Due, schedule
from worker.core.videos import VideoRecord, adopt
from worker.state import Also, Read, Writes, joined, optimistic, spend, text
from worker.state import metrics as figures
from worker.state.budget import release
from worker.state.keys import Keys
from worker.state.polling import queue_sample
from worker.state.videos import write

log = logging.getLogger(__name__)

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


KEEP_ALL = Retention()  # chains kept for ever, every archived file kept: the store's default


def _duration_sample(old: Chain, new: Chain, event: TaskUpdate) -> float | None:
    """How long the task that ``event`` ended took, when it succeeded (``polling.took``)."""
    after = new.step(event.index)
    if after.status is not StepStatus.SUCCEED:
        return None
    before = old.step(event.index)
    return took(task_seconds(event.task), before.submitted_at, after.ended_at)


class UnknownChain(KeyError):
    """No chain has this id."""


SCAN_BATCH = 100  # chains read at once while looking for those in one status
MAX_SCANNED = 1000  # chains one filtered page reads at most, before it hands back a cursor


@dataclass(frozen=True)
class Page:
    """Chains newest first, and the ``before`` that continues after them (None: no more)."""

    chains: list[Chain]
    next_before: float | None


@dataclass(frozen=True)
class Timing:
    poll_after: float
    submit_lease: float
    # The sweep's poll of a quiet task comes this much after poll_after: with polls planned
    # at poll_after (POLLING=fixed), it then only stands in for a plan that was lost.
    poll_grace: float = 0.0


@dataclass(frozen=True)
class Settled:
    """What ``Store.settle`` did: the record after, whether it changed, and the chain's
    outcome when the record is a chain's video that settled."""

    record: VideoRecord | None
    changed: bool
    chain: Outcome | None = None


class Store:
    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str,
        timing: Timing,
        retention: Retention = KEEP_ALL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = client
        self.keys = Keys(prefix)
        self.timing = timing
        self.retention = retention
        self.clock = clock
        self._take_due = client.register_script(_TAKE_DUE)
        self._last: tuple[str, bytes] | None = None  # (chain id, its document): _remember

    def _key(self, chain_id: str) -> str:
        return self.keys.chain(chain_id)

    @property
    def _due(self) -> str:
        return self.keys.due

    def _schedule(self, chain: Chain) -> dict[str, float]:
        """The chain's owed work as the members of the ``due`` set."""
        t = self.timing
        due = schedule(chain, poll_after=t.poll_after + t.poll_grace, submit_lease=t.submit_lease)
        return {d.member: at for d, at in due.items()}

    def create(self, chain: Chain) -> None:
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self._key(chain.id), chain.to_json(), nx=True)
            pipe.zadd(self.keys.chains, {chain.id: chain.created_at})
            due = self._schedule(chain)
            if due:
                pipe.zadd(self._due, due)
            figures.chain_moved(pipe, self.keys, None, chain.status.value)
            created, *_ = pipe.execute()
        if not created:
            raise ValueError(f"chain {chain.id} exists already")

    def claim_key(self, key: str, chain_id: str, fingerprint: str, ttl: int) -> tuple[str, str]:
        """Bind an Idempotency-Key to ``chain_id`` unless it is bound already.

        Returns the (chain id, body fingerprint) the key belongs to: ours when we won. The key
        is kept ``ttl`` seconds, or less when finished chains are kept less: it never outlives
        the chain it names.
        """
        name = self.keys.idempotency(key)
        value = f"{chain_id} {fingerprint}"
        ms = min(ttl * 1000, self.retention.chain_ms or ttl * 1000)
        if self.redis.set(name, value, nx=True, px=ms):
            return chain_id, fingerprint
        held = text(self.redis.get(name) or value)
        owner, _, seen = held.partition(" ")
        return owner, seen

    def get(self, chain_id: str) -> Chain:
        raw = self.redis.get(self._key(chain_id))
        if raw is None:
            raise UnknownChain(chain_id)
        self._remember(chain_id, raw)
        return Chain.from_json(raw)

    def _remember(self, chain_id: str, raw: bytes | str) -> None:
        """The chain document last read or written here, the next transition's first read
        (``optimistic``'s hint): a task reads its chain, then changes it, often twice."""
        self._last = (chain_id, raw.encode() if isinstance(raw, str) else raw)

    def forget(self) -> None:
        """Drop the remembered document: a new piece of work (a task) starts."""
        self._last = None

    def _recall(self, chain_id: str) -> bytes | None:
        last, self._last = self._last, None
        return last[1] if last is not None and last[0] == chain_id else None

    def recent(self, *, limit: int, before: float | None = None) -> list[Chain]:
        top = f"({before}" if before is not None else "+inf"
        ids = self.redis.zrevrangebyscore(self.keys.chains, top, "-inf", start=0, num=limit)
        if not ids:
            return []
        raws = self.redis.mget([self._key(text(i)) for i in ids])
        return [Chain.from_json(r) for r in raws if r is not None]

    def page(
        self,
        *,
        limit: int,
        before: float | None = None,
        status: ChainStatus | None = None,
        max_scanned: int = MAX_SCANNED,
    ) -> Page:
        """Up to ``limit`` chains created before ``before``, newest first; with ``status``,
        only those in it.

        A status is derived from the chain (it changes with every transition), so there is no
        index per status: the listing is read on, past the chains in other states, until
        ``limit`` match or it ends. A page that has read ``max_scanned`` chains stops early,
        short, with ``next_before`` where it stopped: paging on never skips a chain.
        """
        top = f"({before}" if before is not None else "+inf"
        found: list[Chain] = []
        offset = scanned = 0
        while True:
            batch = limit if status is None else min(SCAN_BATCH, max_scanned - scanned)
            ids = cast(
                "list[tuple[bytes, float]]",
                self.redis.zrevrangebyscore(
                    self.keys.chains, top, "-inf", start=offset, num=batch, withscores=True
                ),
            )
            if not ids:
                return Page(found, None)
            raws = self.redis.mget([self._key(text(i)) for i, _ in ids])
            for raw in raws:
                scanned += 1
                if raw is None:
                    continue  # listed, but its document is gone
                chain = Chain.from_json(raw)
                if status is None or chain.status is status:
                    found.append(chain)
                    if len(found) == limit:
                        return Page(found, chain.created_at)
            if len(ids) < batch:
                return Page(found, None)  # the listing ended
            offset += len(ids)
            if scanned >= max_scanned:
                return Page(found, float(ids[-1][1]))

    def transition(self, chain_id: str, event: Event, *, also: Also | None = None) -> Outcome:
        """Apply ``event`` atomically (``optimistic``: decided again on a conflict). ``also``:
        writes that ride in the same commit (figures of the work that led to the event),
        committed even when the event changes nothing."""

        stored: list[bytes] = []  # the document after the decision that was committed

        def decide(raw: bytes | None, read: Read) -> tuple[Writes | None, Outcome]:
            if raw is None:
                raise UnknownChain(chain_id)
            writes, out, doc = self._evolve(raw, event, read)
            stored[:] = [doc or raw]
            return joined(writes, also(read) if also is not None else None), out

        out = optimistic(self.redis, self._key(chain_id), decide, hint=self._recall(chain_id))
        self._remember(chain_id, stored[0])
        return out

    def settle(
        self,
        video_id: str,
        change: Callable[[VideoRecord], VideoRecord],
        *,
        also: Also | None = None,
        hint: VideoRecord | None = None,
    ) -> Settled:
        """Apply ``change`` (``archived``, ``lost``) to a video record atomically; when that
        settles a chain's video, the chain learns it (``VideoSettled``) in the same commit.
        ``also``: as in ``transition``. ``hint``: the record as the caller last wrote it
        (the archive's claim), taken as the first read (``optimistic``)."""

        def decide(raw: bytes | None, read: Read) -> tuple[Writes | None, Settled]:
            more = also(read) if also is not None else None
            if raw is None:
                return more, Settled(None, False)
            old = VideoRecord.from_json(raw)
            new = change(old)
            if new == old:
                return more, Settled(old, False)
            told: Writes | None = None
            out: Outcome | None = None
            if new.chain_id is not None and new.settled:
                chain = read(self._key(new.chain_id))
                if chain is not None:
                    told, out, _ = self._evolve(chain, VideoSettled.of(new), read)

            def writes(pipe: Any) -> None:
                write(pipe, self.keys, old, new)
                if told is not None:
                    told(pipe)

            return joined(writes, more), Settled(new, True, out)

        first = hint.to_json().encode() if hint is not None else None
        return optimistic(self.redis, self.keys.video(video_id), decide, hint=first)

    def _evolve(
        self, raw: bytes, event: Event, read: Read
    ) -> tuple[Writes | None, Outcome, bytes | None]:
        """``event`` on the chain document ``raw``: the writes that commit it, the outcome, and
        the document the writes store (None: no change).

        Each video the outcome asks to archive gets its pending record in the same writes, so
        the archive's deadline sweep holds it from the moment the chain does.
        """
        old = Chain.from_json(raw)
        now = self.clock()
        out = evolve(Chain.from_json(raw), event, now, before=old)
        if out.chain == old:
            return None, out, None
        records: list[tuple[VideoRecord | None, VideoRecord]] = []
        for action in out.actions:
            if isinstance(action, ArchiveVideo):
                mine = video_record(out.chain, action.video_id, now)
                found = read(self.keys.video(action.video_id))
                known = None if found is None else VideoRecord.from_json(found)
                record = mine if known is None else adopt(known, mine)
                records.append((known, record))
                if record.settled:  # archived before the chain learned of it
                    told = apply(out.chain, VideoSettled.of(record), now)
                    out = replace(out, chain=told.chain, ended=out.ended or told.ended)
        chain = out.chain
        before, after = self._schedule(old), self._schedule(chain)
        ended = spend.newly_settled(old, chain)
        doc = chain.to_json().encode()

        def writes(pipe: Any) -> None:
            self._put(pipe, old, chain, now, doc)
            gone = [m for m in before if m not in after]
            if gone:
                pipe.zrem(self._due, *gone)
            changed = {m: at for m, at in after.items() if before.get(m) != at}
            if changed:
                pipe.zadd(self._due, changed)
            for known, record in records:
                if record != known:
                    write(pipe, self.keys, known, record)
            spend.count(pipe, self.keys, chain, ended, now)
            figures.chain_moved(pipe, self.keys, old.status.value, chain.status.value)
            if isinstance(event, TaskUpdate) and any(s.index == event.index for s in ended):
                figures.task_ended(pipe, self.keys, event.task)  # once: the step ends once
                sample = _duration_sample(old, chain, event)
                if sample is not None:  # what adaptive polling learns from (state.polling)
                    queue_sample(pipe, self.keys, chain.step(event.index).kind, sample)
            release(pipe, self.keys, old, chain)  # what was reserved is spent, or not needed

        return writes, out, doc

    def _put(self, pipe: Any, old: Chain, chain: Chain, now: float, doc: bytes) -> None:
        """Queue the write of the chain document, with its expiry (``CHAIN_RETENTION_DAYS``)
        once it is finished and owes nothing.

        A plain SET also clears any TTL the document had, so a resumed chain (running again)
        is kept for as long as it runs. ``chains_expiring`` mirrors the expiry for the sweep
        (``trim_expired``). With ``ARCHIVE_KEEP=final`` the change that makes the chain
        succeed also owes the deletion of what its final video supersedes (``prune``).
        """
        key, ttl = self._key(chain.id), self.retention.chain_ms
        if ttl is not None and expires(chain):
            pipe.set(key, doc, px=ttl)
            pipe.zadd(self.keys.chains_expiring, {chain.id: now + ttl / 1000})
        else:
            pipe.set(key, doc)  # no TTL: a running (or resumed) chain stays
            if ttl is not None and expires(old):
                pipe.zrem(self.keys.chains_expiring, chain.id)
        if self.retention.keep is Keep.FINAL and newly_succeeded(old, chain):
            pipe.zadd(self.keys.prune, {chain.id: now + self.timing.poll_after})

    # -- retention: expired chains, and succeeded chains owed a prune ---------------------------
    def trim_expired(self, *, now: float, limit: int = 500) -> int:
        """Take chains whose document expired out of the listing; returns how many."""
        ids = [
            text(i)
            for i in self.redis.zrangebyscore(self.keys.chains_expiring, "-inf", now, 0, limit)
        ]
        if not ids:
            return 0
        with self.redis.pipeline(transaction=False) as pipe:
            for chain_id in ids:
                pipe.pttl(self._key(chain_id))
            ttls = pipe.execute()
        gone = [c for c, ttl in zip(ids, ttls, strict=True) if ttl == -2]
        kept = [c for c, ttl in zip(ids, ttls, strict=True) if ttl == -1]  # taken on again
        with self.redis.pipeline(transaction=True) as pipe:
            if gone:
                pipe.zrem(self.keys.chains, *gone)
            if gone or kept:
                pipe.zrem(self.keys.chains_expiring, *gone, *kept)
            pipe.execute()
        # A chain id is never used again, so one whose document is gone cannot come back.
        return len(gone)

    def take_prunes(self, *, now: float, hold: float, limit: int = 100) -> list[str]:
        """Succeeded chains owed a prune whose fast path has not finished it, each held back
        for ``hold`` seconds so it is handed out once."""
        taken = self._take_due(keys=[self.keys.prune], args=[now, now + hold, limit])
        return [text(i) for i in taken]

    def prune_done(self, chain_id: str) -> None:
        self.redis.zrem(self.keys.prune, chain_id)

    def take_due(self, *, now: float, hold: float, limit: int = 500) -> list[Due]:
        """Due work, each item held back for ``hold`` seconds so it is handed out once."""
        items = [text(i) for i in self._take_due(keys=[self._due], args=[now, now + hold, limit])]
        due, stale = [], []
        for item in items:
            try:
                due.append(Due.parse(item))
            except ValueError:
                stale.append(item)  # work of a kind no longer owed (an older version's)
        if stale:
            log.warning("dropping %d owed item(s) of unknown kinds: %s", len(stale), stale[:5])
            self.redis.zrem(self._due, *stale)
        return due

    # -- provider tasks and what the provider can do ------------------------------------------
    def claim_task(self, task_id: str, owner: str) -> str:
        """Bind a provider task to the step ``owner`` unless it is bound; return its owner."""
        name = self.keys.task_owner(task_id)
        if self.redis.set(name, owner, nx=True, ex=TASK_OWNER_TTL):
            return owner
        return text(self.redis.get(name) or owner)

    def owns(self, task_id: str, owner: str) -> Also:
        """``claim_task`` as writes for the commit that records the task in its step: the
        binding is set there unless the task is bound already."""
        name = self.keys.task_owner(task_id)
        return lambda _: lambda pipe: pipe.set(name, owner, nx=True, ex=TASK_OWNER_TTL)

    def task_owners(self, task_ids: Iterable[str]) -> dict[str, str]:
        """The steps that recorded these tasks, for the ones some step did."""
        ids = list(task_ids)
        if not ids:
            return {}
        found = self.redis.mget([self.keys.task_owner(t) for t in ids])
        return {t: text(v) for t, v in zip(ids, found, strict=True) if v is not None}

    def capabilities(self, provider: str, *whats: str) -> dict[str, Capability]:
        raws = self.redis.hmget(self.keys.provider(provider), list(whats))
        return {
            what: Capability(text(raw)) if raw is not None else Capability.UNKNOWN
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
